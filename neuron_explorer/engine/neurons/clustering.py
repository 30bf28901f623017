"""Hierarchical clustering of the neurons that moved most (METHOD §7).

Dense pairwise distances over every neuron of a large model are infeasible, so a bounded subset is clustered:
the top-K neurons by |Δ|, each described by its z-scored per-prompt activation-shift profile (ā_pre − ā_dpo on
each prompt). Ward linkage on z-scored profiles groups neurons whose shifts rise and fall on the same prompts.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster import hierarchy

from neuron_explorer.cache import layout, schema
from neuron_explorer.engine.defaults import DEFAULT_CLUSTER_TOP_K, DEFAULT_N_CLUSTERS

FEATURES = "z-scored per-prompt activation shift (act_pre - act_dpo per prompt)"


def select_subset(contribution: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(layer, neuron) indices of the top-k neurons by |Δ|, largest first."""
    flat = np.abs(contribution.ravel())
    k = min(top_k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    layers, neurons = np.unravel_index(top, contribution.shape)
    return layers, neurons


def shift_profiles(prompt_acts_pre, prompt_acts_dpo, layers: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """(k, prompts) z-scored activation-shift profiles; a neuron whose shift is constant gets a zero profile."""
    order = np.lexsort((neurons, layers))  # h5py fancy reads want sorted coordinates; read layer by layer
    profiles = np.empty((len(layers), prompt_acts_pre.shape[0]), dtype=np.float64)
    for layer in np.unique(layers):
        rows = order[layers[order] == layer]
        cols = neurons[rows]
        pre = np.asarray(prompt_acts_pre[:, layer, :], dtype=np.float64)[:, cols]
        dpo = np.asarray(prompt_acts_dpo[:, layer, :], dtype=np.float64)[:, cols]
        profiles[rows] = (pre - dpo).T
    centered = profiles - profiles.mean(axis=1, keepdims=True)
    scale = centered.std(axis=1, keepdims=True)
    return np.divide(centered, scale, out=np.zeros_like(centered), where=scale > 1e-12)


def cluster_neurons(
    metrics: dict,
    prompt_acts_pre,
    prompt_acts_dpo,
    *,
    top_k: int = DEFAULT_CLUSTER_TOP_K,
    n_clusters: int = DEFAULT_N_CLUSTERS,
) -> dict | None:
    """Linkage, leaf order, members, flat labels and per-cluster summaries, ready for the cache.

    Returns None when fewer than three neurons or fewer than two prompts make clustering meaningless.
    """
    layers, neurons = select_subset(metrics["contribution"], top_k)
    if len(layers) < 3 or prompt_acts_pre.shape[0] < 2:
        return None
    features = shift_profiles(prompt_acts_pre, prompt_acts_dpo, layers, neurons)
    linkage = hierarchy.linkage(features, method="ward", metric="euclidean")
    labels = hierarchy.fcluster(linkage, t=min(n_clusters, len(layers)), criterion="maxclust").astype(np.int32)
    leaf_order = hierarchy.leaves_list(linkage).astype(np.int32)
    contribution = metrics["contribution"][layers, neurons].astype(np.float64)
    codes = metrics["group"][layers, neurons]
    summary: dict[str, list] = {"cluster": [], "size": [], "sum_contribution": [], "layers": [], "main_group": []}
    for name in schema.GROUP_NAMES:
        summary[f"n_{name}"] = []
    for label in np.unique(labels):
        members = labels == label
        summary["cluster"].append(int(label))
        summary["size"].append(int(members.sum()))
        summary["sum_contribution"].append(float(contribution[members].sum()))
        summary["layers"].append(_layer_ranges(np.unique(layers[members])))
        counts = np.bincount(codes[members], minlength=len(schema.GROUP_NAMES))
        summary["main_group"].append(schema.GROUP_NAMES[int(np.argmax(counts))])
        for code, name in enumerate(schema.GROUP_NAMES):
            summary[f"n_{name}"].append(int(counts[code]))
    return {
        "linkage": linkage,
        "leaf_order": leaf_order,
        "layer": layers.astype(np.int32),
        "neuron": neurons.astype(np.int32),
        "label": labels,
        "summary": {k: np.asarray(v) if k not in ("layers", "main_group") else v for k, v in summary.items()},
        "attrs": {
            "subset_rule": f"top {len(layers)} neurons by |contribution|",
            "top_k": int(top_k),
            "features": FEATURES,
            layout.CLUSTER_METHOD: "ward",
            "metric": "euclidean",
            layout.CLUSTER_COUNT: int(labels.max()),
            "criterion": "maxclust",
        },
    }


def _layer_ranges(layers: np.ndarray) -> str:
    """Compact text such as '3-5,9,12-14'."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{start}" if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(parts)
