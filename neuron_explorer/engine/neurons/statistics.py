"""Per-neuron metrics, the four groups and the share tables of METHOD §2–§3, from recorded means and weights.

Everything here is plain numpy on (n_layers, d_mlp) arrays, so the real pipeline and the synthetic cache used
by tests and benchmarks share one implementation.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from neuron_explorer.cache import schema

TOP_TOXIC_NEURONS = 128
TOXIC_LABEL_THRESHOLD = 0.5  # a base continuation is toxic for the detector AUROC when its score exceeds this


def assign_groups(cos_pre: np.ndarray, act_pre: np.ndarray, act_shift: np.ndarray) -> np.ndarray:
    """int8 group codes in the order of ``schema.GROUP_NAMES``.

    The sign class comes from cos_pre (> 0: toxic-aligned) and ā_pre (> 0: positively activated). The change is
    "reducing" when it moves the neuron's write along the probe down: activation falls (δ > 0) for the toxic-aligned
    classes TP and TN, rises (δ < 0) for the anti-toxic classes AP and AN. δ = 0 counts as not reducing.
    """
    sign_class = schema.sign_classes(cos_pre, act_pre)
    reducing = np.where(cos_pre > 0, act_shift > 0, act_shift < 0)
    return np.where(reducing, sign_class, sign_class + 4).astype(np.int8)


def neuron_metrics(
    *, p_pre, p_dpo, cos_pre, cos_dpo, value_cos, act_pre, act_dpo, written_pre=None, written_dpo=None
) -> dict[str, np.ndarray]:
    """All per-neuron columns of ``schema.NEURON_COLUMNS`` plus ``group``, as float32 / int8 arrays.

    With an output norm (Gemma-2) the write is scaled per token, so P = mean(m·s_t)·p from the written means;
    ā and δ stay the plain activation means.

    Δ splits exactly into firing and writing (METHOD §8): Δ = (ā_pre − ā_dpo)·p_pre + ā_dpo·(p_pre − p_dpo), with
    the written means in place of ā under an output norm, so there the firing term also holds the change of the
    norm's per-token scale.
    """
    act_pre = np.asarray(act_pre, dtype=np.float64)
    act_dpo = np.asarray(act_dpo, dtype=np.float64)
    p_pre = np.asarray(p_pre, dtype=np.float64)
    p_dpo = np.asarray(p_dpo, dtype=np.float64)
    writes_pre = np.asarray(act_pre if written_pre is None else written_pre, dtype=np.float64)
    writes_dpo = np.asarray(act_dpo if written_dpo is None else written_dpo, dtype=np.float64)
    tox_pre, tox_dpo = writes_pre * p_pre, writes_dpo * p_dpo
    columns = {
        "cos_pre": cos_pre,
        "cos_dpo": cos_dpo,
        "p_pre": p_pre,
        "p_dpo": p_dpo,
        "act_pre": act_pre,
        "act_dpo": act_dpo,
        "act_shift": act_pre - act_dpo,
        "tox_pre": tox_pre,
        "tox_dpo": tox_dpo,
        "contribution": tox_pre - tox_dpo,
        "value_cos": value_cos,
        "activation_term": (writes_pre - writes_dpo) * p_pre,
        "weight_term": writes_dpo * (p_pre - p_dpo),
    }
    out = {name: np.asarray(value, dtype=np.float32) for name, value in columns.items()}
    out["group"] = assign_groups(out["cos_pre"], out["act_pre"], out["act_shift"])
    return out


def detector_auroc(prompt_acts, toxic: np.ndarray) -> np.ndarray:
    """Per neuron, the AUROC of its per-prompt mean activation for toxic (``toxic`` True) against non-toxic prompts
    (METHOD §8, AurA's detector ranking), as float32 (n_layers, d_mlp); NaN everywhere when one class is empty.

    The rank form of the Mann–Whitney U, ties counted one half as in scikit-learn's roc_auc_score: no threshold
    sweep, one ranking per layer. `prompt_acts` is (prompts, n_layers, d_mlp) and is read one layer at a time, so an
    HDF5 dataset of a large model never has to fit in memory.
    """
    toxic = np.asarray(toxic, dtype=bool)
    n_prompts, n_layers, d_mlp = prompt_acts.shape
    n_toxic = int(toxic.sum())
    n_clean = n_prompts - n_toxic
    out = np.full((n_layers, d_mlp), np.nan, dtype=np.float32)
    if n_toxic == 0 or n_clean == 0:
        return out
    for layer in range(n_layers):
        ranks = rankdata(np.asarray(prompt_acts[:, layer, :], dtype=np.float64), axis=0)
        u = ranks[toxic].sum(axis=0) - n_toxic * (n_toxic + 1) / 2
        out[layer] = u / (n_toxic * n_clean)
    return out


def identity_residuals(*, written_mean, p, bias_proj, measured) -> np.ndarray:
    """Σ_i p_i·(mean of what scales neuron i's write) + b·ŵ − the measured mean write along ŵ, per layer, in float64
    (the correctness check of METHOD §2; the means and the measurement must cover the same positions)."""
    return (np.asarray(written_mean, np.float64) * np.asarray(p, np.float64)).sum(axis=1) + bias_proj - measured


def layer_columns(
    contribution: np.ndarray,
    *,
    mlp_proj: dict,
    write_scale: dict,
    bias_proj: dict,
    residual: dict,
    sample_written: dict,
    p: dict,
    pooling: dict,
) -> dict:
    """Per-layer columns of the cache (``schema.LAYER_COLUMNS``); dicts are keyed by model, "pre" and "dpo".

    `mlp_proj` is the identity check's measured write along ŵ on its sample of prompts, `write_scale` the mean
    ‖write‖/√d_model
    there and `residual` the identity's error; `sample_written` the recorded means of those same prompts, from which
    ``sum_contribution_sample`` = Σ_i Δ_i on the sample, the side of Σ Δ = measured change − bias change that covers
    the same prompts as the measurement (``change_residual`` is what is left of it). ``sum_contribution`` is over
    every prompt, and `pooling` the error the running totals make in Σ P against the per-prompt means.
    """

    def sample_terms(m: str) -> np.ndarray:
        return np.asarray(sample_written[m], np.float64) * np.asarray(p[m], np.float64)

    sample_contribution = sample_terms("pre") - sample_terms("dpo")
    return {
        "sum_contribution": contribution.astype(np.float64).sum(axis=1),
        "sum_contribution_sample": sample_contribution.sum(axis=1),
        "measured_change": mlp_proj["pre"] - mlp_proj["dpo"],
        "change_residual": residual["pre"] - residual["dpo"],
        **{f"mlp_proj_{m}": mlp_proj[m] for m in ("pre", "dpo")},
        **{f"write_scale_{m}": write_scale[m] for m in ("pre", "dpo")},
        **{f"bias_proj_{m}": bias_proj[m] for m in ("pre", "dpo")},
        **{f"residual_{m}": residual[m] for m in ("pre", "dpo")},
        **{f"pooling_residual_{m}": pooling[m] for m in ("pre", "dpo")},
    }


def summarize(metrics: dict) -> tuple[dict[str, np.ndarray | list[str]], dict]:
    """The share tables (one row per group, both group definitions of METHOD §3 side by side) and the headline
    scalars.

    - v1 (Yang v1): ``count`` and ``sum_contribution`` over the group's neurons as ``assign_groups`` makes them
      (sign of δ, either sign of Δ); ``share_v1`` is a reducing group's Σ Δ over the Σ Δ of the four reducing
      groups, a mirror group's over that of the four mirrors. Never over the net Σ Δ: that is a small difference of
      large sums, and shares over it explode and flip sign.
    - v3 (Yang v3): ``count_v3`` and ``sum_contribution_v3`` over the neurons of the row's sign class with Δ > 0
      (reducing rows) or Δ < 0 (mirror rows); ``share_v3`` is that Σ Δ over Σ of all positive (negative) Δ. With
      unchanged weights, Δ > 0 neurons are exactly the reducing groups; when tuning also turns value vectors, the
      sign class is what v3 counts.
    - ``sum_activation_term`` / ``sum_weight_term`` (and ``_v3``) split each row's Σ Δ into firing and writing over
      the same neurons; the scalars ``net_activation_term`` and ``net_weight_term`` split the net Σ Δ.
    """
    contribution = metrics["contribution"].astype(np.float64)
    codes = metrics["group"]
    n_reducing = len(schema.REDUCING_GROUPS)
    sign_class = codes % n_reducing
    positive_total = contribution[contribution > 0].sum()
    negative_total = contribution[contribution < 0].sum()
    terms = {name: metrics[name].astype(np.float64) for name in ("activation_term", "weight_term")}
    count: list[int] = []
    count_v3: list[int] = []
    delta_rows: list[float] = []
    v3_rows: list[float] = []
    term_sums: dict[str, list[float]] = {f"sum_{name}{suffix}": [] for name in terms for suffix in ("", "_v3")}
    for code in range(len(schema.GROUP_NAMES)):
        members = codes == code
        count.append(int(members.sum()))
        delta_rows.append(float(contribution[members].sum()))
        side = contribution > 0 if code < n_reducing else contribution < 0
        kept = (sign_class == code % n_reducing) & side
        count_v3.append(int(kept.sum()))
        v3_rows.append(float(contribution[kept].sum()))
        for name, values in terms.items():
            term_sums[f"sum_{name}"].append(float(values[members].sum()))
            term_sums[f"sum_{name}_v3"].append(float(values[kept].sum()))
    sum_delta, sum_v3 = np.array(delta_rows), np.array(v3_rows)
    reducing = np.arange(len(schema.GROUP_NAMES)) < n_reducing
    table: dict[str, np.ndarray | list[str]] = {
        "group": list(schema.GROUP_NAMES),
        "reducing": reducing,
        "count": np.array(count, dtype=np.int64),
        "sum_contribution": sum_delta,
        "share_v1": np.where(
            reducing, _share(sum_delta, sum_delta[reducing].sum()), _share(sum_delta, sum_delta[~reducing].sum())
        ),
        "count_v3": np.array(count_v3, dtype=np.int64),
        "sum_contribution_v3": sum_v3,
        "share_v3": np.where(reducing, _share(sum_v3, positive_total), _share(sum_v3, negative_total)),
        **{name: np.array(values) for name, values in term_sums.items()},
    }
    scalars = {
        "sum_positive_contribution": float(positive_total),
        "sum_negative_contribution": float(negative_total),
        "net_contribution": float(contribution.sum()),
        **{f"net_{name}": float(values.sum()) for name, values in terms.items()},
        "n_positive": int((contribution > 0).sum()),
        "n_neurons": int(contribution.size),
        **top_toxic_share(metrics, positive_total),
    }
    return table, scalars


def _share(part: np.ndarray, total: float) -> np.ndarray:
    """part / total, 0 where either is 0 (and never −0, which would print as "−0.0%" over a negative total)."""
    return np.where(part == 0, 0.0, part / total) if total else np.zeros_like(part)


def top_toxic_share(metrics: dict, positive_total: float, k: int = TOP_TOXIC_NEURONS) -> dict:
    """The v2 headline: of the top-k neurons by cos_pre, those with ā_pre > 0 and δ > 0; their Σ Δ over Σ positive Δ."""
    cos = metrics["cos_pre"].ravel()
    k = min(k, cos.size)
    top = np.argpartition(-cos, k - 1)[:k]
    keep = top[(metrics["act_pre"].ravel()[top] > 0) & (metrics["act_shift"].ravel()[top] > 0)]
    part = float(metrics["contribution"].ravel()[keep].astype(np.float64).sum())
    return {
        "top_toxic_k": k,
        "top_toxic_kept": int(keep.size),
        "top_toxic_sum": part,
        "top_toxic_share": part / positive_total if positive_total else 0.0,
        "top_toxic_all_sum": float(metrics["contribution"].ravel()[top].astype(np.float64).sum()),
    }


def summarize_dynamics(contributions: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
    """From Δ per step (steps, n_layers, d_mlp; the last step is the final model) and the final group codes:

    - ``group_sums`` (steps, groups): Σ Δ of each group of ``schema.GROUP_NAMES``;
    - ``layer_movement`` (steps, n_layers): Σ_i |Δ_i| per layer, how far the layer has moved (no cancelling);
    - ``half_step`` (n_layers,): the first step whose movement reaches half the final one (-1 for a layer that
      never moved).
    """
    values = np.asarray(contributions, dtype=np.float64)
    flat_codes = np.asarray(codes).ravel()
    group_sums = np.stack(
        [np.bincount(flat_codes, weights=step.ravel(), minlength=len(schema.GROUP_NAMES)) for step in values]
    )
    movement = np.abs(values).sum(axis=2)
    final = movement[-1]
    reached = movement >= 0.5 * final[None]
    half_step = np.where(final > 0, reached.argmax(axis=0), -1)
    return {"group_sums": group_sums, "layer_movement": movement, "half_step": half_step.astype(np.int64)}
