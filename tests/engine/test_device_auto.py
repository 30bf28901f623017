"""`--device auto` everywhere: every command's default, what it resolves to, and the cache's record of it."""

from __future__ import annotations

import pytest
import torch

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import build_parser, main
from neuron_explorer.engine.model import loading

PROMPTS = "You are a stupid\nThe river runs\nI hate you\nAn old stone bridge\n"


def test_every_command_defaults_to_auto():
    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    with_device = {
        name: sub
        for name, sub in commands.items()
        if any("--device" in action.option_strings for action in sub._actions)
    }
    assert {"build", "compute", "patch", "lab", "evaluate", "train-probe", "make-pairs", "train-dpo"} <= set(
        with_device
    )
    for name, sub in with_device.items():
        defaults = {action.dest: action.default for action in sub._actions}
        assert defaults["device"] == "auto", name
        assert defaults.get("dtype", "auto") == "auto", name


def test_auto_takes_the_gpu_and_bfloat16_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (loading.resolve_device("auto"), loading.resolve_dtype("auto", "cpu")) == ("cpu", torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert loading.resolve_device("auto") == "cuda"
        assert loading.resolve_dtype("auto", "cuda") == dtype


@pytest.mark.parametrize("dtype_option", [[], ["--dtype", "bfloat16"]])
def test_the_cache_records_the_device_and_dtype_auto_chose(
    tiny_models, edited_copy, tmp_path, isolated_home, dtype_option
):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    tuned = edited_copy(tiny_models["llama"], tmp_path / "tuned", noise=0.02)
    output = tmp_path / "auto.h5"
    code = main(
        [
            "compute",
            "--base",
            str(tiny_models["llama"]),
            "--tuned",
            str(tuned),
            "--probe",
            "toxic-embedding",
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--new-tokens",
            "3",
            "--cluster-top-k",
            "20",
            "--clusters",
            "2",
            "-o",
            str(output),
            *dtype_option,
        ]
    )
    assert code == 0
    # what torch itself reports for this machine, and the dtype the weights were asked in
    expected_device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if dtype_option:
        expected_dtype = "bfloat16"
    else:
        expected_dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    with CacheReader(output) as reader:
        provenance = reader.info.provenance
    assert provenance["settings"]["device"] == "auto"
    for model in ("base", "tuned"):
        assert provenance[model]["device"] == expected_device
        assert provenance[model]["dtype"] == expected_dtype
