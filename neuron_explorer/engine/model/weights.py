"""Statistics that come from the weights alone: value-vector projections on the probe, cosines, the bias term,
and the tokens each value vector promotes and suppresses through the unembedding (logit lens).

The logit lens is a (d_mlp × d_model) by (d_model × vocab) product per layer: on a CPU it costs about as much as
generating with the model, on a GPU next to nothing. Its result depends on the weights alone, so it is kept per
layer in a memo keyed by the model's content hash, dtype and placement (`lens_memo`), and computed once per distinct
weight: a second `compute` of the same model (another protocol, other prompts) reads it back.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from neuron_explorer.cache.atomic import atomic_path
from neuron_explorer.engine.defaults import cache_home
from neuron_explorer.engine.model.loading import LoadedModel, execution_device, weights_loaded
from neuron_explorer.errors import UserError

TOKENS_PER_NEURON = 10
LENS_FIELDS = ("top_tokens", "top_scores", "bottom_tokens", "bottom_scores")
LENS_MEMO_VERSION = 1  # bump when the lens's arithmetic changes, so that older memos are not read


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
def value_tokens(loaded: LoadedModel, k: int = TOKENS_PER_NEURON, chunk: int = 1024,
                 advance: Callable[[int], None] | None = None, layers: Sequence[int] | None = None,
                 memo: Path | None = None) -> dict[str, np.ndarray]:
    """Top and bottom k token ids and logit scores of every value vector of `layers` (default all), each array
    (len(layers), d_mlp, k), chunked so that at most chunk × vocab logits exist at a time; with `memo` (a folder,
    `lens_memo`) each layer is read from there when an earlier run computed it, and kept there when computed."""
    arch, model = loaded.arch, loaded.model
    layers = range(arch.n_layers(model)) if layers is None else layers
    d_mlp = arch.d_mlp(model)
    out = {name: np.zeros((len(layers), d_mlp, k), dtype=np.int32 if "tokens" in name else np.float32)
           for name in LENS_FIELDS}
    with weights_loaded(arch.final_norm(model), model.get_output_embeddings()):
        for row, layer in enumerate(layers):
            remembered = _read_memo(memo, layer, k, d_mlp)
            if remembered is None:
                remembered = _lens_top_k(loaded, layer, k, chunk)
                _write_memo(memo, layer, k, remembered)
            for name in LENS_FIELDS:
                out[name][row] = remembered[name]
            if advance is not None:
                advance(1)
    return out


def _lens_top_k(loaded: LoadedModel, layer: int, k: int, chunk: int) -> dict[str, np.ndarray]:
    """One layer's lens, `chunk` value vectors at a time."""
    arch, model = loaded.arch, loaded.model
    with weights_loaded(arch.layers(model)[layer]):
        vectors = arch.value_vectors(model, layer)
        parts = [lens_top_k(loaded, vectors[start:start + chunk], k) for start in range(0, vectors.shape[0], chunk)]
    return {name: np.concatenate([part[name] for part in parts]) for name in LENS_FIELDS}


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
    identity = described.get("content_sha256") or (described.get("revision") and
                                                   f"{described.get('id')}@{described['revision']}")
    if not identity:
        return None
    arch, model = loaded.arch, loaded.model
    key = {"model": identity, "state_dict": described.get("state_dict_sha256"), "architecture": arch.name,
           "dtype": str(next(model.parameters()).dtype),
           "device": execution_device(model.get_output_embeddings()).type,
           "device_map": bool(getattr(model, "hf_device_map", None)), "version": LENS_MEMO_VERSION}
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
                np.savez(stream, **found)
    except (OSError, UserError):
        pass


def vocabulary(tokenizer) -> list[str]:
    """Readable strings for every token id (byte-level markers turned back into spaces and newlines)."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    return [tokenizer.decode([i]) for i in range(size)]
