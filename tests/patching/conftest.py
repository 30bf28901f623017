"""Tiny model pairs and a small real cache for the patching tests (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from neuron_explorer.engine.model.loading import load_model


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """The prompts every cache of `compute_cache` is computed on, in their order in its prompts file."""
    return ["You are a stupid", "She walked to the market in the morning and", "What the hell", "The river runs",
            "I hate you", "The quick brown fox", "Shut up and get out", "An old stone bridge", "You pathetic loser",
            "She bought bread and apples", "Get lost, you fool", "Two hundred years ago"]


@pytest.fixture(scope="session")
def pairs(tiny_models, edited_copy, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("patch-pairs")
    return {kind: (folder, edited_copy(folder, root / f"{kind}-tuned", noise=0.02)) for kind, folder in tiny_models.items()}


@pytest.fixture(scope="session")
def loaded_pairs(pairs):
    return {kind: (load_model(str(base), device="cpu", dtype="float32"),
                   load_model(str(tuned), device="cpu", dtype="float32")) for kind, (base, tuned) in pairs.items()}


@pytest.fixture(scope="session")
def compute_cache(tmp_path_factory, prompts):
    """`compute_cache(base, tuned, name, **settings)`: a real cache of a tiny pair on `prompts`, computed by the
    engine (default settings otherwise: every second prompt held out for patch runs)."""
    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute

    root = tmp_path_factory.mktemp("patch-cache")
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")

    def compute(base: Path, tuned: Path, name: str, **extra) -> Path:
        settings = ComputeSettings(base=str(base), tuned=str(tuned), probe=str(root / "probe.pt"),
                                   prompts=str(root / "prompts.txt"), output=root / name, device="cpu",
                                   dtype="float32", new_tokens=5, cluster_top_k=40, n_clusters=4, **extra)
        return run_compute(settings).path

    return compute


@pytest.fixture(scope="session")
def tiny_cache(pairs, compute_cache) -> Path:
    """A real cache of the tiny Llama pair."""
    return compute_cache(*pairs["llama"], "tiny.h5")


@pytest.fixture
def cache_copy(tiny_cache, tmp_path) -> Path:
    """A private copy, so runs and baselines of one test never show up in another."""
    path = tmp_path / "tiny.h5"
    shutil.copyfile(tiny_cache, path)
    return path


@pytest.fixture(scope="session", autouse=True)
def tiny_models_one_thread(one_torch_thread):
    """Every test here runs tiny models (tests/conftest.py: one_torch_thread)."""
