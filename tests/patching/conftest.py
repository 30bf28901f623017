"""Tiny model pairs and a small real cache for the patching tests (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from neuron_explorer.engine.models import load_model

PROMPTS = ("You are a stupid\nShe walked to the market in the morning and\nWhat the hell\nThe river runs\n"
           "I hate you\nThe quick brown fox\n")


@pytest.fixture(scope="session")
def pairs(tiny_models, edited_copy, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("patch-pairs")
    return {kind: (folder, edited_copy(folder, root / f"{kind}-tuned", noise=0.02)) for kind, folder in tiny_models.items()}


@pytest.fixture(scope="session")
def loaded_pairs(pairs):
    return {kind: (load_model(str(base), device="cpu", dtype="float32"),
                   load_model(str(tuned), device="cpu", dtype="float32")) for kind, (base, tuned) in pairs.items()}


@pytest.fixture(scope="session")
def tiny_cache(pairs, tmp_path_factory) -> Path:
    """A real cache of the tiny Llama pair, computed by the engine."""
    from neuron_explorer.engine.compute import ComputeSettings, run_compute

    root = tmp_path_factory.mktemp("patch-cache")
    (root / "prompts.txt").write_text(PROMPTS)
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")
    base, tuned = pairs["llama"]
    settings = ComputeSettings(base=str(base), tuned=str(tuned), probe=str(root / "probe.pt"),
                               prompts=str(root / "prompts.txt"), output=root / "tiny.h5", device="cpu",
                               dtype="float32", new_tokens=5, cluster_top_k=40, n_clusters=4)
    return run_compute(settings).path


@pytest.fixture
def cache_copy(tiny_cache, tmp_path) -> Path:
    """A private copy, so runs and baselines of one test never show up in another."""
    path = tmp_path / "tiny.h5"
    shutil.copyfile(tiny_cache, path)
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads slow them tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
