"""Default locations, and the numbers of single stages (identity check, clustering, the lens, the probe),
importable without torch so that the command line starts fast. The settings that several commands and stages share
(recording, evaluation, DPO training, device, scorer) live in spec/settings.py."""

from __future__ import annotations

import os
from pathlib import Path

IDENTITY_SAMPLE_SIZE = 32  # prompts the identity check measures by default: its pass costs one forward per prompt
DEFAULT_CLUSTER_TOP_K = 2000
DEFAULT_N_CLUSTERS = 20
# Where the whole logit lens of the value vectors costs too much (a CPU, a large model: engine/model/weights.py's
# lens_rule), `compute` takes the neurons a user is likely to open: this many by each of |Δ|, |δ| and |cos|.
LENS_TOP_N = 1000

# Probe defaults, shared by the engine, `build` and `train-probe`.
PROBE_C = 0.01  # inverse L2 strength on standardized features: strong, for a few hundred to a few thousand texts
LABEL_BAND = 0.3  # offline probe labels: scores within threshold ± band are ambiguous and left out

# The fraction of compute's prompts kept aside for patch runs, so that their evaluation is out of sample.
PATCH_HOLDOUT = 0.5


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
