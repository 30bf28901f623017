"""Where everything lives in a cache file: every HDF5 group and dataset path, and the attribute names code names.

A module of its own, beside `schema.py`: schema says what the values are (the columns and what they mean, the groups,
the version, what a complete file must hold); this module is the file's map. The writer, the reader and the
validation name a place only through it, and no module outside `cache/` spells a path or an attribute name
(tests/test_cache_layout_home.py), so moving a dataset is an edit here and nowhere else. Paths are relative to the
file's root, as h5py takes them. The format is docs/cache-format.md.

The attribute names here are those some code writes or reads one by one. A set of attributes made whole by the
module that computes it and stored as it is (a table's scalars, the clustering's and the difference lens's settings,
the identity check's verdicts) keeps its keys in that module; docs/cache-format.md lists them.
"""

from __future__ import annotations

ROOT = "/"

# -- groups and root datasets ------------------------------------------------------------------------------------
NEURONS = "neurons"  # per-neuron arrays (schema.NEURON_COLUMNS, schema.TOKEN_ARRAYS, the group codes)
GROUP_CODES = "group"  # the dataset under NEURONS of each neuron's group code (schema.GROUP_NAMES)
NEURON_GROUP = f"{NEURONS}/{GROUP_CODES}"
LAYERS = "layers"  # the per-layer table of the identity check (schema.LAYER_COLUMNS)
PROMPTS = "prompts"  # the statistics prompts' table
PROMPT_TEXT = "prompts/text"
PROMPT_ACTS = "prompt_acts"  # each model's (prompts, layers, d_mlp) mean activations
PATCH_PROMPTS = "patch_prompts"  # the prompts compute held out for patch runs
VOCAB = "vocab"
PROBE_DIRECTION = "probe/direction"
SUMMARY = "summary"  # one row per group (schema.SUMMARY_COLUMNS); its attributes are the headline scalars
CLUSTERS = "clusters"  # the clustered neurons: linkage, leaf_order, layer, neuron, label
CLUSTER_LABEL = "clusters/label"
CLUSTER_SUMMARY = "clusters/summary"
DIFFERENCES = "differences"  # one group per schema.DIFFERENCE_SOURCES
DYNAMICS = "dynamics"  # schema.DYNAMICS_ARRAYS
EVALUATION = "evaluation"  # written by the build: base and DPO evaluated
EVALUATION_GENERATIONS = "evaluation_generations"
BUILD = "build"  # written by the build: its stages


def neuron_path(name: str) -> str:
    """A per-neuron array: a column of schema.NEURON_COLUMNS or schema.TOKEN_ARRAYS, or ``group``."""
    return f"{NEURONS}/{name}"


def layer_path(name: str) -> str:
    return f"{LAYERS}/{name}"


def summary_path(name: str) -> str:
    return f"{SUMMARY}/{name}"


def prompt_acts_path(model: str) -> str:
    """``pre`` or ``dpo``."""
    return f"{PROMPT_ACTS}/{model}"


def difference_path(source: str) -> str:
    """The group of one source of schema.DIFFERENCE_SOURCES."""
    return f"{DIFFERENCES}/{source}"


def dynamics_path(name: str) -> str:
    return f"{DYNAMICS}/{name}"


# -- attributes of the root ------------------------------------------------------------------------------------------
FORMAT = "format"  # schema.FORMAT_NAME: a file without it is foreign
SCHEMA_VERSION = "schema_version"
PACKAGE_VERSION = "package_version"
CREATED = "created"
ARCHITECTURE = "architecture"
N_LAYERS = "n_layers"
D_MLP = "d_mlp"
D_MODEL = "d_model"
PROVENANCE = "provenance"  # JSON: models, probe, prompts, settings, versions
COMPLETE = "complete"  # set true last
POSITIONS = "positions"  # the recorded positions (compute --positions)
PROTOCOL = "protocol"  # the same in words

# -- attributes of groups and datasets --------------------------------------------------------------------------------
COLUMNS = "columns"  # every table: JSON list of its column names, in order
LENS_RULE = "lens_rule"  # on NEURONS: JSON, which neurons' value-vector tokens compute took
AUROC_SCORER = "scorer"  # on neuron_path("auroc"): what labelled the base continuations toxic
AUROC_THRESHOLD = "threshold"  # the score above which a continuation is toxic
AUROC_N_TOXIC = "n_toxic"
AUROC_N_CLEAN = "n_clean"
AUROC_LABELS = "labels"  # the labelling in words
GROUP_CODE_NAMES = "names"  # on NEURON_GROUP: the name of each code (schema.GROUP_NAMES)
HOLDOUT_SOURCE = "source"  # on PATCH_PROMPTS: the prompt set they were held out from
HOLDOUT_RULE = "rule"  # on PATCH_PROMPTS: how they were chosen
HOLDOUT_FRACTION = "fraction"  # on PATCH_PROMPTS: compute --patch-holdout
HOLDOUT_SPLIT = "split"  # on PATCH_PROMPTS: by template or by prompt (absent in older caches)
CLUSTER_COUNT = "n_clusters"  # on CLUSTERS
CLUSTER_METHOD = "method"  # on CLUSTERS: the scipy linkage method
DYNAMICS_STEPS = "steps"  # on DYNAMICS: the checkpoints, oldest first, the final model last
DYNAMICS_GROUPS = "groups"  # on DYNAMICS: the columns of group_sums
DYNAMICS_MEMBERSHIP = "membership"  # on DYNAMICS: whose groups every step uses, in words
DYNAMICS_HALF_STEP = "half_step"  # on DYNAMICS: what the half_step array holds, in words
