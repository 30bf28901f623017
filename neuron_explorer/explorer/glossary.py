"""Every term and number the screens show, in words: the help screen's glossary (`?` or F1 on any screen).

The neuron columns take their meaning from the column list (`state.COLUMNS`, whose words come from the cache's
schema), so a column added there is explained here too.
"""

from __future__ import annotations

from .state import COLUMNS

TERMS = (
    (
        "T / A",
        "sign class of a neuron's value vector v: T (toxic-aligned) when cos(v, w) > 0 with the probe w, "
        "A (anti-aligned) when ≤ 0",
    ),
    ("P / N", "sign of its mean activation in the base model: P when ā_pre > 0, N when ≤ 0"),
    (
        "↓ / ↑",
        "a group's direction: ↓ when DPO's change of the activation lowers what the neuron writes along the "
        "probe (TP, TN: ā falls, δ > 0; AP, AN: ā rises, δ < 0), ↑ for its mirror, which raises it. Sorting "
        "uses ▼ (descending) and ▲ (ascending)",
    ),
    (
        "v1 groups",
        "the default everywhere (overview, filter, patch targets): every neuron by sign class and the sign "
        "of δ, either sign of Δ; a ↓ group's share is its Σ Δ over the four ↓ groups' Σ Δ (↑: over the "
        "four mirrors')",
    ),
    (
        "v3 groups",
        "only neurons with Δ > 0, by sign class; a group's share is its Σ Δ over Σ of all positive Δ (↑ "
        "rows: Δ < 0 over Σ of all negative Δ). `v` on the overview shows them",
    ),
    (
        "v2 share",
        "of the 128 neurons with the largest cos_pre (the papers' 'toxic neurons'), those with ā_pre > 0 "
        "and δ > 0: their Σ Δ over Σ of all positive Δ",
    ),
    (
        "ā",
        "mean activation of a neuron over the recorded positions of every prompt (the cache's positions protocol; "
        "the overview's settings line names it)",
    ),
    ("Σ+Δ, net Δ", "the sum of all positive Δ; the sum of every Δ (a small difference of large sums)"),
    ("toxicity ± s.e.", "mean toxicity score of the continuations, ± its standard error over the prompts"),
    (
        "recovered",
        "(tox_base − tox_run) / (tox_base − tox_dpo): the fraction of DPO's toxicity reduction a run "
        "brings back (0 = base, 100% = DPO); its ± is the delta-method standard error from the three "
        "toxicities' standard errors",
    ),
    ("perplexity, F1", "on a neutral corpus, under the run's intervention; F1 of short answers to passages"),
    ("Δ probe", "change of the last layer's projection on the probe, run − base"),
    (
        "progress",
        "a patch job counts every evaluation's prompts, perplexity windows and F1 passages together; "
        "eta extrapolates the rate so far",
    ),
    (
        "heat maps",
        "lab: the probe's projection ŵ·h of the residual stream after each layer (m: of the MLP's "
        "output) per token; red positive (toward toxic), blue negative; ░▒▓█ in quarters of the scale "
        "±X in each panel's title (the largest |value| over the generated tokens), in the residual "
        "stream's units",
    ),
)


def glossary() -> list[tuple[str, str]]:
    """(term, meaning): the terms above, then every neuron column under the label the table shows."""
    return list(TERMS) + [(f"column {column.label}", column.about) for column in COLUMNS]
