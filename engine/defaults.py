"""Default locations of the embedded build and its cache file."""

from __future__ import annotations

from pathlib import Path

from .models import cache_home


def default_cache_path() -> Path:
    """The cache that `neuron-explorer build` writes and `neuron-explorer` opens with no file."""
    return cache_home() / "embedded-default.h5"


def default_work_dir() -> Path:
    """Where the build keeps its stages (probe, pairs, DPO checkpoints) between runs."""
    return cache_home() / "build"


def default_probe_path() -> Path:
    """The probe that `neuron-explorer build` trains on the embedded base model."""
    return default_work_dir() / "probe" / "probe.safetensors"
