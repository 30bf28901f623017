"""Default locations and settings, importable without torch so that the command line starts fast."""

from __future__ import annotations

import os
from pathlib import Path

# Which positions `compute` averages (engine/neurons/recording.py reads them); each line is stored in the cache as `protocol`.
POSITION_PROTOCOLS = {
    "generated": "the generated tokens' own positions (Yang et al. v3, their HF code for Llama, Gemma, Mistral)",
    "predicting": "the last prompt position and generated tokens 1 to N-1, the positions that predict each new token "
                  "(Yang et al. v1, their TransformerLens loop for GPT-2)",
    "prompt": "every real prompt position, no generation",
    "all": "every real prompt position and the generated tokens' own positions",
}
POSITION_MODES = tuple(POSITION_PROTOCOLS)
IDENTITY_SAMPLE_SIZE = 32  # prompts the identity check measures by default: its pass costs one forward per prompt
DEFAULT_CLUSTER_TOP_K = 2000
DEFAULT_N_CLUSTERS = 20
# Where the whole logit lens of the value vectors costs too much (a CPU, a large model: engine/model/weights.py's
# lens_rule), `compute` takes the neurons a user is likely to open: this many by each of |Δ|, |δ| and |cos|.
LENS_TOP_N = 1000

# Alignment defaults, shared by the engine, `build` and the stage commands (train-probe, train-dpo).
PROBE_C = 0.01  # inverse L2 strength on standardized features: strong, for a few hundred to a few thousand texts
LABEL_BAND = 0.3  # offline probe labels: scores within threshold ± band are ambiguous and left out
DPO_BETA = 0.1
DPO_LEARNING_RATE = 1e-5
DPO_STEPS = 80  # chosen on builtin:validation with bench/dpo_validation_sweep.py (docs/alignment.md)

# Where models run, for every command and the build: `auto` takes the GPU when torch sees one, and the dtype that
# suits the device (bfloat16 on a GPU that supports it, else float32; engine/model/loading.py resolves both). The
# cache's provenance records what `auto` chose (each model's `device` and `dtype`).
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "auto"
DTYPE_NAMES = ("float32", "bfloat16", "float16")

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
