"""Where each supported architecture keeps what the engine needs: layers, the MLP output projection whose input is
the neuron activation, the value-vector layout, the norm (if any) between the MLP and the residual stream, the module
whose output is the
MLP's write into the residual stream (for the identity check), the final norm and the unembedding.

One registry entry per family replaces `if gpt2 … elif llama` branches elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from neuron_explorer.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _weight(module: nn.Module) -> torch.Tensor:
    """A module's `weight` parameter (torch types module attributes as `Tensor | Module`)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a module, not a tensor")
    return weight


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    layers_path: str  # the ModuleList of blocks
    out_proj_path: str  # inside a block: its input is m (the activations), its output the MLP output
    value_vectors_in_rows: bool  # Conv1D keeps v_i as weight[i, :]; nn.Linear keeps them as weight[:, i]
    final_norm_path: str
    mlp_path: str = "mlp"  # inside a block: the MLP, whose output (through the output norm, if any) the block adds
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + weight)
    norm_centers: bool = False  # LayerNorm subtracts the mean; RMSNorm does not
    output_norm_path: str | None = None  # Gemma-2: an RMSNorm between the MLP output and the residual stream

    def layers(self, model: nn.Module) -> nn.ModuleList:
        layers = _get(model, self.layers_path)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{self.name}: {self.layers_path} is a {type(layers).__name__}, not a ModuleList of blocks")
        return layers

    def out_proj(self, model: nn.Module, layer: int) -> nn.Module:
        return _get(self.layers(model)[layer], self.out_proj_path)

    def value_vectors(self, model: nn.Module, layer: int) -> torch.Tensor:
        """(d_mlp, d_model): row i is the direction neuron i writes into the residual stream.

        With an output norm the write of token t is m_i·s_t·(gain ⊙ v_i) (s_t: the norm's 1/rms of the MLP output),
        so the written direction gain ⊙ v_i is returned, in float32 as the norm computes it.
        """
        weight = _weight(self.out_proj(model, layer))
        vectors = weight if self.value_vectors_in_rows else weight.T
        norm = self.output_norm(model, layer)
        if norm is None:
            return vectors
        return vectors.float() * (_weight(norm).float() + self.norm_offset)

    def output_norm(self, model: nn.Module, layer: int) -> nn.Module | None:
        return None if self.output_norm_path is None else _get(self.layers(model)[layer], self.output_norm_path)

    def output_norm_scale(self, model: nn.Module, layer: int, mlp_output: torch.Tensor) -> torch.Tensor:
        """s_t = 1/rms of each token's MLP output (shape without the last axis), with the norm's own eps, in float32."""
        norm = self.output_norm(model, layer)
        if norm is None:
            raise ValueError(f"{self.name} has no output norm between the MLP and the residual stream")
        # a plain float attribute of the norm, which torch's `Module.__getattr__` types as `Tensor | Module`
        eps = cast(float, norm.eps)
        return torch.rsqrt(mlp_output.float().pow(2).mean(-1) + eps)

    def mlp_write(self, model: nn.Module, layer: int) -> nn.Module:
        """The module whose output is exactly what the block adds to the residual stream through the MLP: the output
        norm where there is one, else the MLP. Read there, a write keeps the precision of the model's dtype; the
        residual stream after it minus before it would lose it to the stream's larger norm (bf16: all of it)."""
        block = self.layers(model)[layer]
        return _get(block, self.output_norm_path or self.mlp_path)

    def out_bias(self, model: nn.Module, layer: int) -> torch.Tensor | None:
        return getattr(self.out_proj(model, layer), "bias", None)

    def n_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def d_mlp(self, model: nn.Module) -> int:
        return _weight(self.out_proj(model, 0)).shape[0 if self.value_vectors_in_rows else 1]

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm_path)

    def unembedding(self, model: PreTrainedModel) -> torch.Tensor:
        """(vocab, d_model) unembedding matrix (GPT-NeoX calls it `embed_out` before transformers 5, `lm_head`
        since)."""
        return model.get_output_embeddings().weight

    def logit_lens(self, model: PreTrainedModel, vectors: torch.Tensor) -> torch.Tensor:
        """Project residual-stream directions through the final norm's gain (and centring) and the unembedding.

        The norm's bias and the per-vector scale are left out: they shift or scale every token alike and so do
        not change which tokens a vector promotes.
        """
        norm = self.final_norm(model)
        vectors = vectors.to(torch.float32)
        if self.norm_centers:
            vectors = vectors - vectors.mean(dim=-1, keepdim=True)
        gain = getattr(norm, "weight", None)
        if gain is not None:
            vectors = vectors * (gain.to(vectors.device, torch.float32) + self.norm_offset)
        unembed = self.unembedding(model)
        return vectors.to(unembed.device) @ unembed.to(torch.float32).T


REGISTRY: tuple[Architecture, ...] = (
    Architecture("gpt2", ("gpt2",), "transformer.h", "mlp.c_proj", True, "transformer.ln_f", norm_centers=True),
    Architecture(
        "llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3"), "model.layers", "mlp.down_proj", False, "model.norm"
    ),
    Architecture("gemma", ("gemma",), "model.layers", "mlp.down_proj", False, "model.norm", norm_offset=1.0),
    Architecture(
        "gemma2",
        ("gemma2",),
        "model.layers",
        "mlp.down_proj",
        False,
        "model.norm",
        norm_offset=1.0,
        output_norm_path="post_feedforward_layernorm",
    ),
    Architecture(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        "mlp.dense_4h_to_h",
        False,
        "gpt_neox.final_layer_norm",
        norm_centers=True,
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for arch in REGISTRY for t in arch.model_types)


def architecture_for(model_type: str) -> Architecture:
    for arch in REGISTRY:
        if model_type in arch.model_types:
            return arch
    raise UserError(f"architecture '{model_type}' is not supported; supported: {', '.join(supported_model_types())}")
