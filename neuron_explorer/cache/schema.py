"""Names, shapes and versions of the HDF5 cache format (documented in docs/cache-format.md); where each lives in
the file is `layout.py`."""

import numpy as np

from . import layout

FORMAT_NAME = "neuron-explorer-cache"
SCHEMA_VERSION = 3
# What each version fixed, for the one line that refuses an older file.
SCHEMA_CHANGES = {
    2: "position labels and v1 shares were wrong",
    3: "the identity check did not cover the published ā and lost its meaning in bfloat16",
}

# The four groups that reduce toxicity (METHOD §3) and their mirrors, in the order of the stored int8 codes.
REDUCING_GROUPS = ("TP↓", "TN↓", "AP↓", "AN↓")
MIRROR_GROUPS = ("TP↑", "TN↑", "AP↑", "AN↑")
GROUP_NAMES = REDUCING_GROUPS + MIRROR_GROUPS
SIGN_CLASSES = ("TP", "TN", "AP", "AN")

# The figures of one evaluation (engine/measure/evaluation.py): the columns of the cache's `evaluation` table and the
# metrics of every baseline and run record.
EVALUATION_METRICS = (
    "toxicity",
    "toxicity_sem",
    "n_prompts",
    "perplexity",
    "n_tokens",
    "f1",
    "n_f1",
    "seconds",
    "check_toxicity",
    "check_toxicity_sem",
)
# What a run adds from base and DPO evaluated with its settings (engine/patching/runs.recovered_metrics).
RECOVERED_METRICS = (
    "recovered",
    "recovered_probe",
    "probe_change",
    "base_toxicity",
    "dpo_toxicity",
    "base_perplexity",
    "dpo_perplexity",
)
# The metrics of a stored run record (the Runs screen's columns): the evaluation's, the probe projection, the
# recovered fractions and the number of neurons the run changed.
RUN_METRICS = (*EVALUATION_METRICS, "probe_projection", *RECOVERED_METRICS, "neurons")


def sign_classes(cos: np.ndarray, act: np.ndarray) -> np.ndarray:
    """int8 codes into `SIGN_CLASSES`: T(oxic-aligned) when cos > 0 else A(nti), P(ositively activated) when ā > 0
    else N. The groups (statistics.assign_groups) and the tuning-free edit (Yang v3) classify neurons by this one
    rule, each with its own cosine."""
    return np.where(cos > 0, np.where(act > 0, 0, 1), np.where(act > 0, 2, 3)).astype(np.int8)


# Per-neuron float arrays, each of shape (n_layers, d_mlp), stored under /neurons.
NEURON_COLUMNS = {
    "cos_pre": "cos(v_i, w) in the base model",
    "cos_dpo": "cos(v_i, w) in the tuned model",
    "p_pre": "v_i · ŵ in the base model",
    "p_dpo": "v_i · ŵ in the tuned model",
    "act_pre": "ā_i, mean activation over the recorded positions, base model",
    "act_dpo": "ā_i, mean activation over the recorded positions, tuned model",
    "act_shift": "δ_i = ā_pre − ā_dpo (positive: DPO lowered the activation)",
    "tox_pre": "P_i, the mean of what the neuron writes along the probe, base model: ā_i p_i (with an output norm, "
    "Gemma-2: mean(m_i s_t) p_i, s_t the norm's 1/rms of token t's MLP output, p_i of the written vector)",
    "tox_dpo": "P_i, the same for the tuned model",
    "contribution": "Δ_i = P_pre − P_dpo, the neuron's contribution to toxicity reduction",
    "value_cos": "cos(v_i^pre, v_i^dpo), how much tuning turned the value vector",
    "activation_term": "δ_i·p_pre: the part of Δ_i from the activation shift, read through the base value vector "
    "(firing; with an output norm, δ of the written means)",
    "weight_term": "ā_dpo·(p_pre − p_dpo): the part of Δ_i from the change of the value vector (writing); "
    "activation_term + weight_term = Δ_i",
    "auroc": "AUROC of the neuron's per-prompt mean activation (base model) for toxic against non-toxic base "
    "continuations (scorer > 0.5); NaN when the prompts hold one class only",
}
TOKEN_ARRAYS = tuple(
    f"{d}_{kind}_{m}" for m in ("pre", "dpo") for d in ("top", "bottom") for kind in ("tokens", "scores")
)

# Per-layer float64 vectors of length n_layers, stored under /layers. The identity check
# (engine/neurons/identity_check.py)
# measures a sample of prompts (attributes `identity_prompts`, `identity_sample_size`) in a separate pass; the
# attributes `identity_dtype`, `identity_tolerance`, `identity_passed`, `pooling_relative`, `pooling_tolerance` and
# `pooling_passed` hold the verdicts.
LAYER_COLUMNS = {
    "sum_contribution": "Σ_i Δ_i over the layer's neurons (all recorded prompts): what the cache publishes",
    "sum_contribution_sample": "Σ_i Δ_i over the identity check's prompts only, from their recorded means",
    "measured_change": "mlp_proj_pre − mlp_proj_dpo: the measured change of the MLP's mean write along ŵ on the "
    "identity check's prompts",
    "change_residual": "residual_pre − residual_dpo = sum_contribution_sample − (measured_change − bias change): "
    "the error of Σ Δ = measured change, both on the identity check's prompts",
    "mlp_proj_pre": "mean over the identity prompts' positions of (the MLP's write into the residual stream) · ŵ, "
    "read at the MLP's output (Gemma-2: its output norm's) by the check's own pass, base model",
    "mlp_proj_dpo": "the same for the tuned model",
    "write_scale_pre": "mean over the same positions of ‖the MLP's write‖/√d_model (its typical projection on a unit "
    "direction), base model: the scale the identity's "
    "relative residual divides by",
    "write_scale_dpo": "the same for the tuned model",
    "bias_proj_pre": "b_out · ŵ, base model",
    "bias_proj_dpo": "b_out · ŵ, tuned model",
    "residual_pre": "Σ_i P_i (identity prompts) + b_out·ŵ − mlp_proj_pre, base model: the identity's error",
    "residual_dpo": "the same for the tuned model",
    "pooling_residual_pre": "Σ_i p_i·(published ā_i − ā_i pooled from the per-prompt means of every prompt), base "
    "model: 0 when every batch reached the published totals exactly once",
    "pooling_residual_dpo": "the same for the tuned model",
}

# The /summary table, one row per group in GROUP_NAMES order: the two group definitions of METHOD §3 side by side.
SUMMARY_COLUMNS = {
    "group": "the group's name (GROUP_NAMES)",
    "reducing": "true for the four groups that reduce toxicity (↓), false for their mirrors (↑)",
    "count": "v1 groups (sign of δ): neurons meeting the group's signs, either sign of Δ",
    "sum_contribution": "v1: Σ Δ over those neurons",
    "share_v1": "v1: that Σ Δ over the Σ Δ of the four ↓ groups (↑ rows: of the four ↑ groups)",
    "count_v3": "v3 (Δ > 0 by sign class): neurons of the row's sign class with Δ > 0 (↑ rows: Δ < 0)",
    "sum_contribution_v3": "v3: Σ Δ over those neurons",
    "share_v3": "v3: that Σ Δ over Σ positive Δ (↑ rows: over Σ negative Δ)",
    "sum_activation_term": "v1: Σ activation_term (firing) over the group's neurons",
    "sum_weight_term": "v1: Σ weight_term (writing) over the group's neurons; the two sum to sum_contribution",
    "sum_activation_term_v3": "v3: Σ activation_term over the row's neurons",
    "sum_weight_term_v3": "v3: Σ weight_term over the row's neurons; the two sum to sum_contribution_v3",
}

# Where the pair differs on any text (engine/neurons/difference_lens.py): one group /differences/<source> per source,
# holding these arrays; its attributes: source, n_texts, n_tokens, kl_mean and kl_max (KL(base ‖ tuned), nats).
DIFFERENCE_SOURCES = {
    "corpus": "the perplexity corpus (text unrelated to toxicity), in windows",
    "prompts": "the statistics prompts, each followed by the base model's continuation",
}
DIFFERENCE_ARRAYS = {
    "mean_difference": "(n_layers, d_model) mean over positions of the block output, tuned − base",
    "probe_projection": "(n_layers,) that difference · ŵ",
    "difference_norm": "(n_layers,) ‖that difference‖",
    "residual_norm": "(n_layers,) mean ‖block output‖ of the base model, for scale",
    "top_tokens": "(n_layers, k) the tokens the difference promotes through the base final norm and unembedding",
    "top_scores": "(n_layers, k) their logits",
    "bottom_tokens": "(n_layers, k) the tokens it suppresses",
    "bottom_scores": "(n_layers, k) their logits",
}

# Neuron dynamics across training (engine/neurons/dynamics.py, `compute --tuned A --tuned B …`): the /dynamics group,
# one row per step (the checkpoints in the order given, the final tuned model last); its attribute `steps` names them.
DYNAMICS_ARRAYS = {
    "contribution": "(steps, n_layers, d_mlp) f16: each neuron's Δ at each step",
    "group_sums": "(steps, groups) Σ Δ of each group of GROUP_NAMES, the final model's membership at every step",
    "layer_movement": "(steps, n_layers) Σ_i |Δ_i| per layer",
    "half_step": "(n_layers,) the first step whose movement reaches half the final one; -1: the layer never moved",
}

SIDECAR_SUFFIX = ".annotations"

# What every complete cache holds, checked when a file is opened (reader.open_cache_file), so that a damaged or
# hand-edited file is refused with one line instead of failing deep inside a screen. Each dataset maps to the
# dtype kinds it may have (numpy's dtype.kind; "O" is an HDF5 string) and its shape, written with the root
# attributes' names, numbers, or None for any length.
# Datasets added after schema 2 was released (docs/beyond.md). A schema-2 cache written before them still opens:
# they are not required, and the reader gives their neuron columns as NaN.
OPTIONAL_DATASETS = frozenset(
    {
        *(layout.neuron_path(name) for name in ("activation_term", "weight_term", "auroc")),
        *(
            layout.summary_path(name)
            for name in ("sum_activation_term", "sum_weight_term", "sum_activation_term_v3", "sum_weight_term_v3")
        ),
    }
)
REQUIRED_ATTRIBUTES = (layout.ARCHITECTURE, layout.N_LAYERS, layout.D_MLP, layout.D_MODEL, layout.CREATED)
Shape = tuple[str | int | None, ...]  # root attributes' names, numbers, or None for any length
_DECLARED_DATASETS: dict[str, tuple[str, Shape]] = {
    **{layout.neuron_path(name): ("f", (layout.N_LAYERS, layout.D_MLP)) for name in NEURON_COLUMNS},
    layout.NEURON_GROUP: ("iu", (layout.N_LAYERS, layout.D_MLP)),
    **{layout.layer_path(name): ("f", (layout.N_LAYERS,)) for name in LAYER_COLUMNS},
    **{
        layout.summary_path(name): ("O" if name == "group" else "biuf", (len(GROUP_NAMES),)) for name in SUMMARY_COLUMNS
    },
    layout.PROMPT_TEXT: ("O", (None,)),
}
REQUIRED_DATASETS = {path: kind for path, kind in _DECLARED_DATASETS.items() if path not in OPTIONAL_DATASETS}
