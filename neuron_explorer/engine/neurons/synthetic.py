"""Synthetic caches: random but internally consistent statistics of any size, written by the real code path.

Tests of the explorer and the explorer benchmark use them, so neither needs a model.
"""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from neuron_explorer.cache import layout, schema
from neuron_explorer.cache.writer import CacheWriter
from neuron_explorer.engine.neurons.results import write_dynamics, write_statistics, write_token_tables
from neuron_explorer.engine.neurons.statistics import layer_columns, neuron_metrics

TOKENS_PER_NEURON = 10
FILL_THREADS = 2  # threads that shuffle and compress prompt-activation chunks (zlib and numpy release the GIL)


def build_synthetic_cache(
    path: str | Path,
    *,
    n_layers: int = 4,
    d_mlp: int = 64,
    n_prompts: int = 24,
    d_model: int = 32,
    vocab_size: int = 500,
    seed: int = 0,
    cluster_top_k: int = 200,
    n_clusters: int = 8,
    dynamics: bool = True,
) -> Path:
    """Write a complete cache with ``n_layers × d_mlp`` neurons and ``n_prompts`` prompts; return its path. With
    ``dynamics`` it holds a series of three steps: a third, two thirds and all of the final Δ."""
    rng = np.random.default_rng(seed)
    shape = (n_layers, d_mlp)
    norms = rng.uniform(0.5, 1.5, shape)
    cos_pre = rng.normal(0.0, 0.08, shape).clip(-1, 1)
    cos_dpo = (cos_pre + rng.normal(0.0, 0.002, shape)).clip(-1, 1)
    act_pre = rng.normal(0.0, 0.15, shape)
    act_dpo = act_pre - rng.normal(0.0, 0.02, shape) * np.sign(cos_pre)
    metrics = neuron_metrics(
        p_pre=cos_pre * norms,
        p_dpo=cos_dpo * norms,
        cos_pre=cos_pre,
        cos_dpo=cos_dpo,
        value_cos=1 - np.abs(rng.normal(0, 1e-3, shape)),
        act_pre=act_pre,
        act_dpo=act_dpo,
    )
    zeros = {m: np.zeros(n_layers) for m in ("pre", "dpo")}
    writes = {m: metrics[f"tox_{m}"].astype(np.float64).sum(axis=1) for m in ("pre", "dpo")}
    layers = layer_columns(
        metrics["contribution"],
        bias_proj=zeros,
        residual=zeros,
        pooling=zeros,
        mlp_proj=writes,
        write_scale={m: np.abs(writes[m]) for m in writes},
        sample_written={m: metrics[f"act_{m}"] for m in writes},
        p={m: metrics[f"p_{m}"] for m in writes},
    )
    prompts = [f"Synthetic prompt number {i} that starts a sentence and" for i in range(n_prompts)]
    provenance = {
        "synthetic": True,
        "seed": seed,
        "base": {"spec": "synthetic-base", "id": "synthetic/base"},
        "tuned": {"spec": "synthetic-dpo", "id": "synthetic/dpo"},
        "probe": {"source": "synthetic", "sha256": "0" * 64},
        "prompts": {"source": "synthetic", "n": n_prompts},
        "settings": {"positions": "generated", "new_tokens": 20, "max_prompt_tokens": 32},
    }
    with CacheWriter(
        path, n_layers=n_layers, d_mlp=d_mlp, d_model=d_model, architecture="synthetic", provenance=provenance
    ) as writer:
        toxicity = np.random.default_rng(seed + 1).uniform(0, 1, n_prompts)  # own stream: the rest stays as it was
        writer.write_prompts(
            {
                "text": prompts,
                "continuation_pre": [" and then it went on"] * n_prompts,
                "continuation_dpo": [" and then it stopped"] * n_prompts,
                "toxicity_pre": toxicity,
            }
        )
        pre = writer.prompt_activations("pre", n_prompts)
        dpo = writer.prompt_activations("dpo", n_prompts)
        _fill_prompt_activations(rng, pre, dpo, act_pre, act_dpo)
        tokens = {}
        for model in ("pre", "dpo"):
            for direction, sign in (("top", -1), ("bottom", 1)):
                tokens[f"{direction}_tokens_{model}"] = rng.integers(
                    0, vocab_size, shape + (TOKENS_PER_NEURON,), dtype=np.int32
                )
                scores = np.sort(rng.normal(0, 1, shape + (TOKENS_PER_NEURON,)), axis=-1)
                tokens[f"{direction}_scores_{model}"] = (scores[..., ::-1] if sign < 0 else scores).astype(np.float32)
        write_token_tables(writer, tokens, [f"tok{i}" for i in range(vocab_size)])
        writer.write_array(
            layout.PROBE_DIRECTION, rng.normal(0, 1, d_model).astype(np.float32), {"source": "synthetic"}
        )
        write_statistics(
            writer,
            metrics,
            layers,
            pre,
            dpo,
            toxicity_pre=toxicity,
            scorer="synthetic",
            cluster_top_k=cluster_top_k,
            n_clusters=n_clusters,
        )
        _write_differences(writer, np.random.default_rng(seed + 2), n_layers, d_model, vocab_size)
        final = metrics["contribution"].astype(np.float64)
        if dynamics:
            write_dynamics(
                writer, ["step-100", "step-200", "final"], [final / 3, final * 2 / 3, final], metrics["group"]
            )
    return Path(path)


def _write_differences(
    writer: CacheWriter, rng: np.random.Generator, n_layers: int, d_model: int, vocab_size: int
) -> None:
    """Random residual differences, growing with depth, for each source of `schema.DIFFERENCE_SOURCES`."""
    for n, source in enumerate(schema.DIFFERENCE_SOURCES):
        difference = rng.normal(0, 0.01, (n_layers, d_model)) * np.arange(1, n_layers + 1)[:, None]
        scores = np.sort(rng.normal(0, 1, (n_layers, 2 * TOKENS_PER_NEURON)), axis=1)
        arrays = {
            "mean_difference": difference.astype(np.float32),
            "probe_projection": difference[:, 0],
            "difference_norm": np.linalg.norm(difference, axis=1),
            "residual_norm": np.linspace(1.0, 10.0, n_layers),
            "top_tokens": rng.integers(0, vocab_size, (n_layers, TOKENS_PER_NEURON), dtype=np.int32),
            "top_scores": scores[:, ::-1][:, :TOKENS_PER_NEURON].astype(np.float32),
            "bottom_tokens": rng.integers(0, vocab_size, (n_layers, TOKENS_PER_NEURON), dtype=np.int32),
            "bottom_scores": scores[:, :TOKENS_PER_NEURON].astype(np.float32),
        }
        writer.write_table(
            layout.difference_path(source),
            arrays,
            {"source": source, "n_texts": 16, "n_tokens": 2048 * (n + 1), "kl_mean": 0.01 * (n + 1), "kl_max": 0.5},
        )


def _fill_prompt_activations(rng: np.random.Generator, pre, dpo, act_pre: np.ndarray, act_dpo: np.ndarray) -> None:
    """Per-prompt activations: the neuron means plus per-prompt noise (the same noise, ×1.1, for DPO).

    Streams one block of prompts (one chunk's height) at a time, drawing the noise prompt by prompt so that a
    Llama-70B-sized block holds ~0.6 GB, not ~3 GB. The chunks are byte-shuffled and deflated in threads (deflate
    is most of the time: ~11 GB for a 70B-sized cache) and written with `write_direct_chunk`: the same bytes the
    datasets' own filters (shuffle + gzip) write, which run on one core.
    """
    n_prompts, n_layers, d_mlp = pre.shape
    block, _, width = pre.chunks
    level = pre.compression_opts
    assert pre.shuffle and pre.compression == "gzip" and pre.chunks == dpo.chunks
    means = {"pre": act_pre, "dpo": act_dpo}
    lock = threading.Lock()

    def write_layer(dataset, model: str, noise: np.ndarray, start: int, layer: int) -> None:
        scale = 1.1 if model == "dpo" else None
        rows = noise.shape[0]
        layer_noise = noise[:, layer] if scale is None else noise[:, layer] * scale
        values = (means[model][layer][None] + layer_noise).astype(np.float16)
        padded = np.zeros((block, -(-d_mlp // width) * width), dtype=np.float16)
        padded[:rows, :d_mlp] = values
        for column in range(0, d_mlp, width):
            chunk = np.ascontiguousarray(padded[:, column : column + width])
            shuffled = chunk.view(np.uint8).reshape(-1, 2).T.tobytes()
            data = zlib.compress(shuffled, level)
            with lock:
                dataset.id.write_direct_chunk((start, layer, column), data)

    with ThreadPoolExecutor(FILL_THREADS) as pool:
        for start in range(0, n_prompts, block):
            rows = min(block, n_prompts - start)
            noise = np.empty((rows, n_layers, d_mlp), dtype=np.float32)
            for row in range(rows):  # the same stream as one (rows, n_layers, d_mlp) draw
                noise[row] = rng.normal(0.0, 0.05, (n_layers, d_mlp))
            jobs = [
                pool.submit(write_layer, dataset, model, noise, start, layer)
                for dataset, model in ((pre, "pre"), (dpo, "dpo"))
                for layer in range(n_layers)
            ]
            for job in jobs:
                job.result()
