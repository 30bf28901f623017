"""Writing the statistics of a model pair into an open cache writer (shared by `compute` and synthetic caches)."""

from __future__ import annotations

import numpy as np

from neuron_explorer.cache import layout, schema
from neuron_explorer.cache.writer import CacheWriter
from neuron_explorer.engine.defaults import DEFAULT_CLUSTER_TOP_K, DEFAULT_N_CLUSTERS
from neuron_explorer.engine.neurons.clustering import cluster_neurons
from neuron_explorer.engine.neurons.statistics import (
    TOXIC_LABEL_THRESHOLD,
    detector_auroc,
    summarize,
    summarize_dynamics,
)


def write_statistics(
    writer: CacheWriter,
    metrics: dict,
    layer_columns: dict,
    prompt_acts_pre,
    prompt_acts_dpo,
    *,
    toxicity_pre: np.ndarray,
    scorer: str,
    cluster_top_k: int = DEFAULT_CLUSTER_TOP_K,
    n_clusters: int = DEFAULT_N_CLUSTERS,
) -> tuple[dict, dict]:
    """Neuron arrays (with each neuron's detector AUROC from the stored per-prompt activations and the base
    continuations' toxicity `toxicity_pre` by `scorer`), groups, per-layer columns, the share tables and the
    clusters; returns (group table, scalars)."""
    toxic = np.asarray(toxicity_pre) > TOXIC_LABEL_THRESHOLD
    metrics = {**metrics, "auroc": detector_auroc(prompt_acts_pre, toxic)}
    writer.write_neuron_arrays({name: metrics[name] for name in schema.NEURON_COLUMNS})
    n_toxic = int(toxic.sum())
    labels = "base continuations of the statistics prompts: toxic when the score exceeds the threshold" + (
        "" if 0 < n_toxic < toxic.size else "; one class only, so every AUROC is NaN"
    )
    writer.write_attrs(
        {
            layout.AUROC_SCORER: scorer,
            layout.AUROC_THRESHOLD: TOXIC_LABEL_THRESHOLD,
            layout.AUROC_N_TOXIC: n_toxic,
            layout.AUROC_N_CLEAN: int(toxic.size - n_toxic),
            layout.AUROC_LABELS: labels,
        },
        layout.neuron_path("auroc"),
    )
    writer.write_groups(metrics["group"])
    writer.write_layers(layer_columns)
    table, scalars = summarize(metrics)
    writer.write_table(layout.SUMMARY, {name: table[name] for name in schema.SUMMARY_COLUMNS}, scalars)
    clusters = cluster_neurons(metrics, prompt_acts_pre, prompt_acts_dpo, top_k=cluster_top_k, n_clusters=n_clusters)
    if clusters is not None:
        members = {key: clusters[key] for key in ("linkage", "leaf_order", "layer", "neuron", "label")}
        writer.write_table(layout.CLUSTERS, members, clusters["attrs"])
        writer.write_table(layout.CLUSTER_SUMMARY, clusters["summary"])
    return table, scalars


def write_token_tables(writer: CacheWriter, tokens: dict[str, np.ndarray], vocab: list[str]) -> None:
    """Top/bottom token ids and scores per neuron (``schema.TOKEN_ARRAYS``) and the vocabulary strings."""
    writer.write_neuron_arrays({name: tokens[name] for name in schema.TOKEN_ARRAYS})
    writer.write_vocab(vocab)


def write_dynamics(writer: CacheWriter, steps: list[str], contributions: list[np.ndarray], codes: np.ndarray) -> None:
    """The dynamics group (``schema.DYNAMICS_ARRAYS``)."""
    stacked = np.stack(contributions)
    summary = summarize_dynamics(stacked, codes)
    writer.write_array(layout.dynamics_path("contribution"), stacked.astype(np.float16))
    for name, array in summary.items():
        writer.write_array(layout.dynamics_path(name), array)
    writer.write_attrs(
        {
            layout.DYNAMICS_STEPS: list(steps),
            layout.DYNAMICS_GROUPS: list(schema.GROUP_NAMES),
            layout.DYNAMICS_MEMBERSHIP: "the final model's groups at every step",
            layout.DYNAMICS_HALF_STEP: "first step whose Σ|Δ| in the layer reaches half the final one",
        },
        layout.DYNAMICS,
    )
