"""Model folders from a collaborator (issue #20): nothing in a folder runs code, and a broken one is one line.

A folder that names custom code (`auto_map` in config.json or tokenizer_config.json) used to make transformers ask
on stdin whether to run it, and a `y` ran the folder's Python; here `input` answers `y`, and the planted module would
create a marker file when imported. Weights saved as a pickle that holds more than tensors, and a malformed
tokenizer.json, are refused in one line.
"""

from __future__ import annotations

import builtins
import json
import shutil

import pytest
import torch

from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.errors import UserError

PLANTED_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def planted_folder(tiny_models, tmp_path, file_name):
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_models["llama"], folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(PLANTED_CODE.format(marker=str(marker)))
    path = folder / file_name
    content = json.loads(path.read_text())
    if file_name == "config.json":
        content["model_type"] = "evil"  # not a transformers architecture: only the folder's code knows it
        content["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    else:
        content["tokenizer_class"] = "EvilTokenizer"
        content["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    path.write_text(json.dumps(content))
    return folder, marker


@pytest.mark.parametrize("file_name", ["config.json", "tokenizer_config.json"])
def test_a_folder_that_names_custom_code_is_refused_and_its_code_never_runs(
    tiny_models, tmp_path, monkeypatch, file_name
):
    """Fails on the old code: with `y` on stdin the folder's module ran (config.json), or the tokenizer's."""
    folder, marker = planted_folder(tiny_models, tmp_path, file_name)
    monkeypatch.setattr(builtins, "input", lambda *args: "y")
    with pytest.raises(UserError, match=f"{file_name} names custom code to run \\(field 'auto_map'\\)") as refused:
        load_model(str(folder), device="cpu", dtype="float32")
    assert "\n" not in str(refused.value) and not marker.exists()


def test_train_dpo_refuses_a_policy_that_names_custom_code(tiny_models, tmp_path):
    from neuron_explorer.engine.alignment.dpo import DPOSettings, train_dpo

    folder, marker = planted_folder(tiny_models, tmp_path, "config.json")
    settings = DPOSettings(
        policy=str(folder),
        pairs=str(tmp_path / "pairs.jsonl"),
        output=str(tmp_path / "out"),
        work_dir=str(tmp_path / "work"),
    )
    with pytest.raises(UserError, match="field 'auto_map'"):
        train_dpo(settings)
    assert not marker.exists() and not (tmp_path / "out").exists()


class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_that_hold_objects_are_refused_in_one_line(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    torch.save({"model.embed_tokens.weight": Planted(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="cannot load model") as refused:
        load_model(str(folder), device="cpu", dtype="float32")
    assert "\n" not in str(refused.value) and not marker.exists()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"model": {"type": "BPE", "vocab": 3}})])
def test_a_malformed_tokenizer_is_one_line(tiny_models, tmp_path, content):
    """Fails on the old code: a traceback from the tokenizers library."""
    folder = tmp_path / "broken-tokenizer"
    shutil.copytree(tiny_models["llama"], folder)
    (folder / "tokenizer.json").write_text(content)
    with pytest.raises(UserError, match="cannot load model") as refused:
        load_model(str(folder), device="cpu", dtype="float32")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "device, message", [("bogus", "not a device"), ("meta", "not a device"), ("cuda:x", "not a device")]
)
def test_a_device_that_is_not_one_is_refused_before_loading(tiny_models, device, message):
    """Fails on the old code: torch's RuntimeError traceback (bogus), or a model on `meta` that fails later."""
    with pytest.raises(UserError, match=message):
        load_model(str(tiny_models["llama"]), device=device, dtype="float32")


@pytest.mark.parametrize("text", ["0=abc", "gpu=1GiB", "0=12 parsecs"])
def test_a_max_memory_that_is_not_a_size_is_refused(text):
    from neuron_explorer.engine.model.loading import parse_max_memory

    with pytest.raises(UserError, match="--max-memory"):
        parse_max_memory(text)
    assert parse_max_memory("0=20GiB,cpu=60GiB,disk=1000") == {0: "20GiB", "cpu": "60GiB", "disk": 1000}
