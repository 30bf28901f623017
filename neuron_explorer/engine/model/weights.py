"""Statistics that come from the weights alone: value-vector projections on the probe, cosines, the bias term,
and the tokens each value vector promotes and suppresses through the unembedding (logit lens)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from neuron_explorer.engine.model.loading import LoadedModel, weights_loaded

TOKENS_PER_NEURON = 10


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
                 advance: Callable[[int], None] | None = None,
                 layers: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Top and bottom k token ids and logit scores of every value vector of `layers` (default all), each array
    (len(layers), d_mlp, k), chunked so that at most chunk × vocab logits exist at a time."""
    arch, model = loaded.arch, loaded.model
    layers = range(arch.n_layers(model)) if layers is None else layers
    d_mlp = arch.d_mlp(model)
    out = {name: np.zeros((len(layers), d_mlp, k), dtype=np.int32 if "tokens" in name else np.float32)
           for name in ("top_tokens", "top_scores", "bottom_tokens", "bottom_scores")}
    with weights_loaded(arch.final_norm(model), model.get_output_embeddings()):
        for row, layer in enumerate(layers):
            with weights_loaded(arch.layers(model)[layer]):
                vectors = arch.value_vectors(model, layer)
                for start in range(0, d_mlp, chunk):
                    logits = arch.logit_lens(model, vectors[start:start + chunk])
                    top = torch.topk(logits, k, dim=-1)
                    bottom = torch.topk(logits, k, dim=-1, largest=False)
                    rows = slice(start, start + logits.shape[0])
                    out["top_tokens"][row, rows] = top.indices.cpu().numpy()
                    out["top_scores"][row, rows] = top.values.cpu().numpy()
                    out["bottom_tokens"][row, rows] = bottom.indices.cpu().numpy()
                    out["bottom_scores"][row, rows] = bottom.values.cpu().numpy()
            if advance is not None:
                advance(1)
    return out


def vocabulary(tokenizer) -> list[str]:
    """Readable strings for every token id (byte-level markers turned back into spaces and newlines)."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    return [tokenizer.decode([i]) for i in range(size)]
