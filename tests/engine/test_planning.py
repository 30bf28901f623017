"""`compute --plan`: sizes read from configs against the loaded models, the KV cache against a real one, and the
command itself (a plan, an estimate, a warning when a setting will not fit, no file written)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.engine.model.planning import model_size


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny models (tests/conftest.py: one_torch_thread)."""


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_sizes_from_the_config_are_those_of_the_loaded_model(kind, tiny_models):
    size = model_size(str(tiny_models[kind]))
    loaded = load_model(str(tiny_models[kind]), device="cpu", dtype="float32")
    parameters = list(loaded.model.parameters())  # tied weights once, as the plan counts them
    assert size.n_params == sum(p.numel() for p in parameters)
    assert size.weight_bytes(torch.float32) == sum(p.numel() * p.element_size() for p in parameters)
    assert (size.n_layers, size.d_mlp, size.d_model) == (
        loaded.arch.n_layers(loaded.model),
        loaded.arch.d_mlp(loaded.model),
        loaded.d_model,
    )
    ids = torch.ones(3, 11, dtype=torch.long)
    with torch.no_grad():
        cache = loaded.model(input_ids=ids, use_cache=True).cache
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert size.kv_bytes(3, 11, torch.float32) == real


def run_compute(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "neuron_explorer", "compute", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_compute_plan_prints_the_plan_and_an_estimate_and_writes_nothing(pairs, prompts, tmp_path):
    base, tuned = pairs["llama"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    output = tmp_path / "out.h5"
    common = [
        "--base",
        str(base),
        "--tuned",
        str(tuned),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--probe",
        "toxic-embedding",
        "--device",
        "cpu",
        "-o",
        str(output),
        "--plan",
    ]
    done = run_compute(*common, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    for text in (
        "3 layers × 64 neurons",
        "weights, base",
        "KV cache, batch of 16",
        "per-prompt activations, 6 prompts",
        "total on the device",
        "estimated time:",
    ):
        assert text in done.stdout, (text, done.stdout)
    assert "WARNING" not in done.stdout
    assert not output.exists()

    tight = run_compute(*common, "--no-warm-up", "--device-map", "auto", "--max-memory", "cpu=1000", tmp_path=tmp_path)
    assert tight.returncode == 0, tight.stderr
    assert "WARNING" in tight.stdout and "offload" in tight.stdout and "of 1000 B available" in tight.stdout
    assert "estimated time" not in tight.stdout
    assert not output.exists()


@pytest.mark.slow
def test_patch_plan_counts_the_tuned_model_for_patch_live_and_stores_no_run(tiny_cache, tmp_path):
    import shutil

    cache = tmp_path / "tiny.h5"
    shutil.copyfile(tiny_cache, cache)
    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_explorer",
            "patch",
            str(cache),
            "--set",
            "group:TP↓",
            "--mode",
            "scale",
            "--plan",
            "--device",
            "cpu",
            "--max-prompts",
            "4",
            "--ppl-windows",
            "2",
            "--f1-items",
            "2",
            "--ppl-window",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert plain.returncode == 0, plain.stderr
    assert "weights, tuned (to measure the DPO baseline)" in plain.stdout
    assert "estimated time:" in plain.stdout and "3 evaluations of 4 prompts" in plain.stdout
    live = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_explorer",
            "patch",
            str(cache),
            "--set",
            "group:TP↓",
            "--mode",
            "patch-live",
            "--plan",
            "--no-warm-up",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert live.returncode == 0, live.stderr
    assert "weights, tuned (runs beside the base model)" in live.stdout and "estimated time" not in live.stdout
    assert not (tmp_path / "tiny.h5.annotations" / "runs").exists() or not any(
        (tmp_path / "tiny.h5.annotations" / "runs").iterdir()
    )
