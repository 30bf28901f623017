"""Statistics that come from the weights alone: value-vector projections on the probe, cosines, the bias term,
and the tokens each value vector promotes and suppresses through the unembedding (logit lens).

The logit lens is a (d_mlp × d_model) by (d_model × vocab) product per layer: on a CPU it costs about as much as
generating with the model, on a GPU next to nothing. Its result depends on the weights alone, so it is kept per
layer in a memo keyed by the model's content hash, dtype and placement (`lens_memo`), and computed once per distinct
weight: a second `compute` of the same model (another protocol, other prompts) reads it back. Where the whole lens
would cost much more than the run itself (a CPU, a large vocabulary), `compute` takes it for the neurons a user is
likely to open (`LensRule`) and the lab's model worker computes any other on demand (`lens_top_k`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuron_explorer.cache.atomic import atomic_path
from neuron_explorer.engine.defaults import LENS_TOP_N, cache_home
from neuron_explorer.engine.model.loading import LoadedModel, execution_device, weights_loaded
from neuron_explorer.engine.model.planning import LOGIT_LENS_CHUNK
from neuron_explorer.errors import UserError

TOKENS_PER_NEURON = 10
LENS_FIELDS = ("top_tokens", "top_scores", "bottom_tokens", "bottom_scores")
LENS_MEMO_VERSION = 1  # bump when the lens's arithmetic changes, so that older memos are not read


# `--lens auto` computes the whole lens when one model's costs at most this many multiply-adds (neurons × vocabulary
# × d_model) on the device, about 10 s: a GPU does ~1e14 a second even in float32, this 2-core CPU ~5e10 (the
# embedded pair's 1.3e12 a model took 25 s). Otherwise it takes the top LENS_TOP_N neurons of each ranking.
LENS_ALL_BUDGET = {"cuda": 1e15, "cpu": 5e11}
LENS_RANKINGS = {"contribution": "|Δ|", "act_shift": "|δ|", "cos_pre": "|cos|"}  # what the explorer sorts by


@dataclass(frozen=True)
class LensRule:
    """Which neurons get their value-vector tokens: all (top_n None), or the union of the top_n of each ranking."""

    top_n: int | None
    why: str

    def neurons(self, metrics: dict[str, np.ndarray]) -> np.ndarray | None:
        """The (n_layers, d_mlp) mask of the neurons this rule computes; None for all."""
        if self.top_n is None:
            return None
        shape = metrics["contribution"].shape
        chosen = np.zeros(shape[0] * shape[1], dtype=bool)
        for name in LENS_RANKINGS:
            magnitude = np.abs(np.nan_to_num(metrics[name].ravel()))
            count = min(self.top_n, magnitude.size)
            chosen[np.argpartition(-magnitude, count - 1)[:count]] = True
        return chosen.reshape(shape)

    def record(self, computed: int) -> dict:
        """The rule as the cache stores it (the `neurons` group's `lens_rule` attribute)."""
        by = (
            "every neuron"
            if self.top_n is None
            else f"the top {self.top_n} by each of {', '.join(LENS_RANKINGS.values())} ({', '.join(LENS_RANKINGS)})"
        )
        return {
            "rule": "all" if self.top_n is None else "top",
            "top_n": self.top_n,
            "by": by,
            "computed": computed,
            "why": self.why,
        }


def lens_rule(
    setting: str, *, device: str, n_layers: int, d_mlp: int, vocab: int, d_model: int, memo_complete: bool
) -> LensRule:
    """`--lens`: `all`, a count N (the top N of each ranking), or `auto`: all where that is cheap (a GPU, a small
    model, or a memo that already holds every layer), else the top LENS_TOP_N."""
    if setting == "all":
        return LensRule(None, "asked for (--lens all)")
    if setting.isdigit():
        return LensRule(int(setting) or None, "asked for (--lens N)")
    if setting != "auto":
        raise UserError(f"--lens {setting}: give auto, all, or a number of neurons per ranking")
    if memo_complete:
        return LensRule(None, "every layer was in the logit-lens memo")
    cost = n_layers * d_mlp * vocab * d_model
    budget = LENS_ALL_BUDGET["cuda" if device.startswith("cuda") else "cpu"]
    if cost <= budget:
        return LensRule(None, f"{cost:.2g} multiply-adds a model, within {budget:.0g} on {device}")
    return LensRule(
        LENS_TOP_N,
        f"{cost:.2g} multiply-adds a model, over {budget:.0g} on {device}: the rest on demand (the lab's model worker)",
    )


def memo_complete(memo: Path | None, n_layers: int, k: int) -> bool:
    """Whether an earlier run kept every layer's lens (a broken file is computed anew all the same)."""
    return memo is not None and all(_memo_file(memo, layer, k).exists() for layer in range(n_layers))


@torch.inference_mode()
def probe_projections(loaded: LoadedModel, unit_probe: np.ndarray) -> dict[str, np.ndarray]:
    """p (n_layers, d_mlp), ‖v‖ (n_layers, d_mlp) and b_out·ŵ (n_layers,), computed layer by layer on the device."""
    arch, model = loaded.arch, loaded.model
    p, norms, bias = [], [], []
    for layer in range(arch.n_layers(model)):
        with weights_loaded(arch.layers(model)[layer]):
            vectors = arch.value_vectors(model, layer).float()
            probe = torch.as_tensor(unit_probe, dtype=torch.float32, device=vectors.device)
            p.append((vectors @ probe).double().cpu())
            norms.append(vectors.norm(dim=1).double().cpu())
            b = arch.out_bias(model, layer)
            bias.append(float(b.float() @ probe) if b is not None else 0.0)
    p_arr, norm_arr = torch.stack(p).numpy(), torch.stack(norms).numpy()
    return {"p": p_arr, "norm": norm_arr, "cos": p_arr / np.maximum(norm_arr, 1e-30), "bias_proj": np.array(bias)}


@torch.inference_mode()
def value_cosines(pre: LoadedModel, dpo: LoadedModel) -> np.ndarray:
    """cos(v_i^pre, v_i^dpo) for every neuron: how far tuning turned each value vector."""
    rows = []
    for layer in range(pre.arch.n_layers(pre.model)):
        with weights_loaded(pre.arch.layers(pre.model)[layer], dpo.arch.layers(dpo.model)[layer]):
            a = pre.arch.value_vectors(pre.model, layer).float()
            b = dpo.arch.value_vectors(dpo.model, layer).float().to(a.device)
            rows.append(torch.nn.functional.cosine_similarity(a, b, dim=1).double().cpu())
    return torch.stack(rows).numpy()


@torch.inference_mode()
def value_tokens(
    loaded: LoadedModel,
    k: int = TOKENS_PER_NEURON,
    chunk: int = LOGIT_LENS_CHUNK,
    advance: Callable[[int], None] | None = None,
    layers: Sequence[int] | None = None,
    memo: Path | None = None,
    neurons: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Top and bottom k token ids and logit scores of every value vector of `layers` (default all), each array
    (len(layers), d_mlp, k), chunked so that at most chunk × vocab logits exist at a time; with `memo` (a folder,
    `lens_memo`) each layer is read from there when an earlier run computed it, and kept there when computed whole.
    With `neurons` (an (n_layers, d_mlp) mask, `LensRule.neurons`) a layer the memo lacks is computed for those
    neurons only; the others get token -1 and score NaN."""
    arch, model = loaded.arch, loaded.model
    layers = range(arch.n_layers(model)) if layers is None else layers
    d_mlp = arch.d_mlp(model)
    out = {
        name: np.full(
            (len(layers), d_mlp, k),
            -1 if "tokens" in name else np.nan,
            dtype=np.int32 if "tokens" in name else np.float32,
        )
        for name in LENS_FIELDS
    }
    with weights_loaded(arch.final_norm(model), model.get_output_embeddings()):
        for row, layer in enumerate(layers):
            rows = None if neurons is None or neurons[layer].all() else np.flatnonzero(neurons[layer])
            remembered = _read_memo(memo, layer, k, d_mlp)
            if remembered is not None:
                rows = None
            elif rows is None:
                remembered = _lens_top_k(loaded, layer, k, chunk)
                _write_memo(memo, layer, k, remembered)
            elif len(rows):
                remembered = _lens_top_k(loaded, layer, k, chunk, rows)
            if remembered is not None:  # None: no memo, and none of this layer's neurons asked for
                for name in LENS_FIELDS:
                    if rows is None:
                        out[name][row] = remembered[name]
                    elif len(rows):
                        out[name][row, rows] = remembered[name]
            if advance is not None:
                advance(1)
    return out


def _lens_top_k(
    loaded: LoadedModel, layer: int, k: int, chunk: int, rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """One layer's lens (of `rows` only, when given), `chunk` value vectors at a time."""
    arch, model = loaded.arch, loaded.model
    with weights_loaded(arch.layers(model)[layer]):
        vectors = arch.value_vectors(model, layer)
        if rows is not None:
            vectors = vectors[torch.as_tensor(rows, device=vectors.device)]
        parts = [lens_top_k(loaded, vectors[start : start + chunk], k) for start in range(0, vectors.shape[0], chunk)]
    return {name: np.concatenate([part[name] for part in parts]) for name in LENS_FIELDS}


def neuron_tokens(
    loaded: LoadedModel, neurons: Sequence[tuple[int, int]], k: int = TOKENS_PER_NEURON
) -> dict[str, np.ndarray]:
    """The lens of a few (layer, neuron) value vectors (LENS_FIELDS, (len(neurons), k) each): what the lab's worker
    computes when the explorer opens a neuron that `compute` left out (`LensRule`)."""
    arch, model = loaded.arch, loaded.model
    by_layer: dict[int, list[int]] = {}
    for position, (layer, _neuron) in enumerate(neurons):
        by_layer.setdefault(layer, []).append(position)
    out = {
        name: np.zeros((len(neurons), k), dtype=np.int32 if "tokens" in name else np.float32) for name in LENS_FIELDS
    }
    with torch.inference_mode(), weights_loaded(arch.final_norm(model), model.get_output_embeddings()):
        for layer, positions in by_layer.items():
            rows = np.array([neurons[position][1] for position in positions])
            found = _lens_top_k(loaded, layer, k, LOGIT_LENS_CHUNK, rows)
            for name in LENS_FIELDS:
                out[name][positions] = found[name]
    return out


@torch.inference_mode()
def lens_top_k(loaded: LoadedModel, vectors: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """The top and bottom k tokens and logits of each vector through the logit lens (LENS_FIELDS, (len(vectors), k)
    each); the final norm and the unembedding must be loaded (`weights_loaded`)."""
    logits = loaded.arch.logit_lens(loaded.model, vectors)
    found = {}
    for largest, (tokens, scores) in ((True, LENS_FIELDS[:2]), (False, LENS_FIELDS[2:])):
        best = torch.topk(logits, k, dim=-1, largest=largest)
        found[tokens] = best.indices.cpu().numpy().astype(np.int32)
        found[scores] = best.values.cpu().numpy().astype(np.float32)
    return found


def lens_memo(loaded: LoadedModel) -> Path | None:
    """The memo folder of this model's logit lens, or None when the model has no content identity (a hub model
    without a pinned revision): keyed by the weights' content hash (or hub id and revision, and a loaded state
    dict's hash), the dtype, where the unembedding computes and whether accelerate spread the model."""
    described = loaded.description
    identity = described.get("content_sha256") or (
        described.get("revision") and f"{described.get('id')}@{described['revision']}"
    )
    if not identity:
        return None
    arch, model = loaded.arch, loaded.model
    key = {
        "model": identity,
        "state_dict": described.get("state_dict_sha256"),
        "architecture": arch.name,
        "dtype": str(next(model.parameters()).dtype),
        "device": execution_device(model.get_output_embeddings()).type,
        "device_map": bool(getattr(model, "hf_device_map", None)),
        "version": LENS_MEMO_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_home() / "logit-lens" / digest


def _memo_file(memo: Path, layer: int, k: int) -> Path:
    return memo / f"layer-{layer}-k{k}.npz"


def _read_memo(memo: Path | None, layer: int, k: int, d_mlp: int) -> dict[str, np.ndarray] | None:
    """A layer's remembered lens; None when there is none, or it is unreadable or of another shape (computed anew)."""
    if memo is None:
        return None
    try:
        with np.load(_memo_file(memo, layer, k)) as stored:
            found = {name: stored[name] for name in LENS_FIELDS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return found if all(array.shape == (d_mlp, k) for array in found.values()) else None


def _write_memo(memo: Path | None, layer: int, k: int, found: dict[str, np.ndarray]) -> None:
    """Keep a layer's lens (atomically; a memo that cannot be written is only a missed saving)."""
    if memo is None:
        return
    try:
        memo.mkdir(parents=True, exist_ok=True)
        with atomic_path(_memo_file(memo, layer, k)) as temporary:
            with open(temporary, "wb") as stream:
                # allow_pickle: numpy's default, named so that mypy does not match `**found` against it
                np.savez(stream, allow_pickle=True, **found)
    except (OSError, UserError):
        pass


def vocabulary(tokenizer) -> list[str]:
    """Readable strings for every token id (byte-level markers turned back into spaces and newlines)."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    return [tokenizer.decode([i]) for i in range(size)]
