"""Runs that must fail early and in one line (issue #20): a cache that names a hub model (the hub is contacted
only for a model the user names), a read-only sidecar folder (found before the evaluation, not after it), and a
full disk under the libraries that fold the error into their own exceptions (safetensors while converting or
publishing a model folder, torch and safetensors while train-dpo saves a checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import pytest

from neuron_explorer.cache import annotations
from neuron_explorer.cli import main
from neuron_explorer.engine.alignment.pairs import save_pairs
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

PROMPTS = ["You are a stupid", "She walked to the market in the morning and", "What the hell", "The river runs"]


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    return build_synthetic_cache(tmp_path_factory.mktemp("good") / "cache.h5", n_layers=2, d_mlp=4, n_prompts=6)


def recording_hub_models(good_cache, folder):
    path = folder / "cache.h5"
    shutil.copyfile(good_cache, path)
    with h5py.File(path, "r+") as handle:
        record = json.loads(handle.attrs["provenance"])
        record["base"]["spec"], record["tuned"]["spec"] = "some-org/some-model", "some-org/some-model-dpo"
        handle.attrs["provenance"] = json.dumps(record)
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["lab", "{cache}", "--prompt", "You are", "--device", "cpu"],
        [
            "patch",
            "{cache}",
            "--set",
            "top:4:|contribution|",
            "--mode",
            "zero-ablate",
            "--no-save",
            "--device",
            "cpu",
            "--in-sample",
        ],
    ],
)
def test_a_hub_model_named_by_the_cache_is_never_fetched(good_cache, tmp_path, argv, capsys, monkeypatch):
    """Fails on the old code: the file's hub id went to the hub (52 s offline before an error)."""
    import huggingface_hub

    contacted = []
    monkeypatch.setattr(
        huggingface_hub.file_download,
        "hf_hub_download",
        lambda *args, **kwargs: contacted.append(args) or pytest.fail("the hub was contacted"),
    )
    cache = recording_hub_models(good_cache, tmp_path)
    code = main([part.format(cache=cache) for part in argv])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and not contacted
    assert "records the hub model 'some-org/some-model'" in error and "pass --base some-org/some-model" in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_sidecar_is_found_before_the_evaluation(good_cache, tmp_path, capsys):
    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    sidecar = annotations.sidecar_dir(cache)
    sidecar.mkdir()
    sidecar.chmod(0o555)
    try:
        code = main(["patch", str(cache), "--set", "group:TP↓", "--in-sample", "--device", "cpu"])
    finally:
        sidecar.chmod(0o755)
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "cannot store" in error


def test_a_read_only_sidecar_check_fails_in_one_line(good_cache, tmp_path, monkeypatch):
    """The same check where the tests run as root (who may write anywhere): the folder's creation fails."""
    from neuron_explorer.errors import UserError

    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if "write-check" in kwargs.get("prefix", ""):
            raise PermissionError(13, "Permission denied", str(kwargs.get("dir")))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(UserError, match="cannot store runs beside .*Permission denied") as refused:
        annotations.check_writable(cache)
    assert "\n" not in str(refused.value)


# Run as `python -c LIMITED LIMIT ARGS...`: the process may write no file larger than LIMIT bytes (HDF5, torch and
# safetensors then get EFBIG from write), then `neuron_explorer ARGS...` runs through cli.main.
LIMITED = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from neuron_explorer.cli import main
sys.exit(main(sys.argv[2:]))
"""

SAVE_IN_ATOMIC_PATH = r"""
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
import torch
from safetensors.torch import save_file
from neuron_explorer.cache.atomic import atomic_path
from neuron_explorer.errors import UserError
try:
    with atomic_path(Path(sys.argv[1])) as temporary:
        temporary.mkdir()
        save_file({"weight": torch.zeros(100_000)}, temporary / "model.safetensors")
except UserError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
"""


def run_python(code, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow  # real processes under a file-size limit
def test_a_model_folder_that_cannot_be_written_is_one_line(tmp_path):
    """safetensors folds the failed write into SafetensorError (as in the embedded model's conversion and in
    train-dpo's publishing). Fails on the old code: a traceback."""
    done = run_python(SAVE_IN_ATOMIC_PATH, tmp_path / "model")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "no space left to write" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_train_dpo_on_a_full_disk_is_one_line(tiny_models, tmp_path):
    """A checkpoint that cannot be saved fails in torch or safetensors inside the Trainer. Fails on the old code:
    a traceback."""
    pairs = tmp_path / "pairs.jsonl"
    save_pairs(
        [
            {
                "prompt": prompt,
                "chosen": " the village under an old bridge.",
                "rejected": " a stupid idiot and I hate you.",
            }
            for prompt in PROMPTS
        ],
        pairs,
        {"test": True},
    )
    done = run_python(
        LIMITED,
        60_000,
        "train-dpo",
        "--model",
        tiny_models["llama"],
        "--pairs",
        pairs,
        "-o",
        tmp_path / "tuned",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--save-steps",
        "1",
        "--eval-steps",
        "1",
        "--patience",
        "0",
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("neuron-explorer: error: ") and ("no space left" in last or "could not write" in last)
    assert not (tmp_path / "tuned").exists()
