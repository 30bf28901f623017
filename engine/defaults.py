"""Default locations and settings, importable without torch so that the command line starts fast."""

from __future__ import annotations

import os
from pathlib import Path

POSITION_MODES = ("generated", "prompt", "all")
DEFAULT_CLUSTER_TOP_K = 2000
DEFAULT_N_CLUSTERS = 20


def cache_home() -> Path:
    """Where converted models, build stages and the default cache live ($NEURON_EXPLORER_HOME overrides)."""
    return Path(os.environ.get("NEURON_EXPLORER_HOME", Path.home() / ".cache" / "neuron-explorer")).expanduser()


def default_cache_path() -> Path:
    """The cache that `neuron-explorer build` writes and `neuron-explorer` opens with no file."""
    return cache_home() / "embedded-default.h5"


def default_work_dir() -> Path:
    """Where the build keeps its stages (probe, pairs, DPO checkpoints) between runs."""
    return cache_home() / "build"


def default_probe_path() -> Path:
    """The probe that `neuron-explorer build` trains on the embedded base model."""
    return default_work_dir() / "probe" / "probe.safetensors"
