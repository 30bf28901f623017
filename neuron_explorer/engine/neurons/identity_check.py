"""The identity of METHOD §2, checked by other code than the recorder's, and the published ā checked against the
per-prompt means.

From the recorder's means and the weights, each layer's MLP writes Σ_i p_i·ā_i + b·ŵ along the probe on average over
the recorded positions (with an output norm, the mean of m_i·s_t in place of ā_i). Here that write is measured in a
separate teacher-forced pass over the recorded tokens: prompts of equal length together, so with no padding, their
positions chosen by plain index arithmetic, the write read where the block takes it (the MLP's output, or its output
norm's) and projected in float64. A position bug in the recorder (padding averaged in, a position off by one) leaves a
residual here; one hook's input and output, compared with each other, agree by linearity whatever was recorded.

The pass measures a sample of prompts. What the cache publishes (ā, P, Δ and every sum of them) comes from the
recorder's running totals over all prompts; `pooling_residuals` compares those with the per-prompt means written to
the file (pooled by `recording.PromptMeans`), so the chain independent pass → per-prompt means → published arrays is
checked link by link.

Precision: the write of a bf16 model is itself rounded to bf16 (and the cached generation and the full pass round
differently), so the residual is judged relative to the write's typical projection on a unit direction, the mean of
‖write‖/√d_model, which is the scale of those roundings whatever the probe, against a tolerance derived from the
model's dtype (`tolerance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from neuron_explorer.engine.defaults import IDENTITY_SAMPLE_SIZE
from neuron_explorer.engine.model.distributed import Ranks
from neuron_explorer.engine.model.generation import encode_prompts
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import LoadedModel
from neuron_explorer.engine.neurons.recording import Recording
from neuron_explorer.engine.neurons.statistics import identity_residuals

# The allowed |residual| / (mean ‖write‖/√d_model per position), in units of the dtype's unit roundoff (2^-24 for
# float32,
# 2^-11 for float16, 2^-8 for bfloat16): the write itself is rounded once to the model's dtype, the sums add
# rounding of their own. The floor keeps float32 from being judged at 1e-6, which its long sums do not reach.
# A position bug leaves ~0.1 or more (tests/engine/test_identity_and_recording.py).
ROUNDOFF_MULTIPLE = 8
TOLERANCE_FLOOR = 1e-4
POOLING_TOLERANCE = 1e-6  # relative: the totals and the per-prompt means are both float64 sums of float32 means


def tolerance(dtype: torch.dtype) -> float:
    """The relative identity residual a correct recording stays under, for a model computing in `dtype`."""
    return max(ROUNDOFF_MULTIPLE * torch.finfo(dtype).eps / 2, TOLERANCE_FLOOR)


@dataclass
class IdentityCheck:
    prompts: list[int]  # the sampled prompt indices
    measured: np.ndarray  # (n_layers,) mean of (the MLP's write into the residual stream · ŵ) over their positions
    scale: (
        np.ndarray
    )  # (n_layers,) mean of ‖the MLP's write‖/√d_model over the same positions: what "relative" divides by
    residual: np.ndarray | None  # (n_layers,) Σ_i p_i·ā_i(sample) + b·ŵ − measured (None where not pooled: rank > 0)
    n_positions: int  # positions the check read
    tolerance: float  # the largest relative residual that passes, from the model's dtype

    @property
    def relative(self) -> np.ndarray:
        if self.residual is None:
            raise ValueError("the identity check's residual is pooled on rank 0 only")
        return np.abs(self.residual) / np.maximum(self.scale, 1e-30)

    @property
    def passed(self) -> bool:
        return bool(np.all(self.relative <= self.tolerance))


def sample_prompts(n_prompts: int, size: int | None = IDENTITY_SAMPLE_SIZE) -> np.ndarray:
    """`size` prompt indices spread evenly over the prompt list (every prompt when `size` is None or larger)."""
    if size is None or size >= n_prompts:
        return np.arange(n_prompts)
    return np.unique(np.linspace(0, n_prompts - 1, size).round().astype(np.int64))


def read_positions(positions: str, prompt_len: int, n_generated: int) -> range:
    """The positions a mode reads in the unpadded sequence prompt + continuation (METHOD §2)."""
    return {
        "generated": range(prompt_len, prompt_len + n_generated),
        "predicting": range(prompt_len - 1, prompt_len + n_generated - 1),
        "prompt": range(0, prompt_len),
        "all": range(0, prompt_len + n_generated),
    }[positions]


def check_identity(
    loaded: LoadedModel,
    texts: list[str],
    recording: Recording,
    sample: np.ndarray,
    unit_probe: np.ndarray,
    weights: dict[str, np.ndarray],
    written_mean: np.ndarray | None,
    *,
    positions: str,
    max_prompt_tokens: int,
    advance: Callable[[int], None] | None = None,
    ranks: Ranks = Ranks(),
) -> IdentityCheck:
    """Measure the `sample` prompts of `recording` (pooled over the ranks, each rank measuring every world_size-th
    prompt) independently and compare with Σ p·`written_mean` + b·ŵ, the sample's recorded means (rank 0 holds
    them; elsewhere pass None and get no residual)."""
    generated = torch.cat(recording.continuation_ids) if recording.continuation_ids else None
    mine = [int(i) for i in sample[ranks.rank :: ranks.world_size]]
    continuations = [generated[i] if generated is not None else torch.zeros(0, dtype=torch.long) for i in mine]
    totals, n_positions = measure_mlp_writes(
        loaded,
        [texts[i] for i in mine],
        continuations,
        unit_probe,
        positions=positions,
        max_prompt_tokens=max_prompt_tokens,
        advance=advance,
    )
    if ranks.world_size > 1:
        n_positions = int(ranks.sum(n_positions))
        totals = ranks.sum(totals)
    measured, scale = totals / max(n_positions, 1)
    residual = (
        None
        if written_mean is None
        else identity_residuals(
            written_mean=written_mean, p=weights["p"], bias_proj=weights["bias_proj"], measured=measured
        )
    )
    return IdentityCheck(
        prompts=[int(i) for i in sample],
        measured=measured,
        scale=scale,
        residual=residual,
        n_positions=n_positions,
        tolerance=tolerance(loaded.model.dtype),
    )


def pooling_residuals(published: np.ndarray, per_prompt: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer, Σ_i p_i·(published − per-prompt pooled mean) (the error it makes in Σ P, in the identity's units)
    and max_i |published − pooled| / max_i |pooled| (relative); both 0 when every batch reached the totals once."""
    difference = np.asarray(published, np.float64) - np.asarray(per_prompt, np.float64)
    largest = np.maximum(np.abs(per_prompt).max(axis=1), 1e-30)
    return {
        "sum": (difference * np.asarray(p, np.float64)).sum(axis=1),
        "relative": np.abs(difference).max(axis=1) / largest,
    }


@torch.inference_mode()
def measure_mlp_writes(
    loaded: LoadedModel,
    prompts: list[str],
    continuations: list[torch.Tensor],
    unit_probe: np.ndarray,
    *,
    positions: str,
    max_prompt_tokens: int,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Per layer, the sums over the read positions of all prompts of (the MLP's write · ŵ) and of ‖write‖/√d_model (its
    typical projection on any unit direction, the scale of its rounding), as a (2, n_layers) array, and the number of
    positions read. Each prompt is truncated as the recorder truncates it
    and followed by its continuation; sequences of the same length run as one batch (no padding, so every row reads
    the same positions)."""
    arch, model = loaded.arch, loaded.model
    n_layers = arch.n_layers(model)
    probe = torch.as_tensor(unit_probe, dtype=torch.float64)
    totals = np.zeros((2, n_layers))
    read: list[int] = []

    def measure(layer: int) -> Callable:
        def hook(module, inputs, output):
            write = output[0] if isinstance(output, tuple) else output
            selected = write[:, read].double()
            totals[0, layer] += float((selected @ probe.to(write.device)).sum())
            totals[1, layer] += float(selected.norm(dim=-1).sum()) / math.sqrt(selected.shape[-1])

        return hook

    hooks = [(arch.mlp_write(model, layer), measure(layer)) for layer in range(n_layers)]
    by_length: dict[tuple[int, int], list[torch.Tensor]] = {}
    for text, continuation in zip(prompts, continuations):
        ids, _ = encode_prompts(loaded.tokenizer, [text], max_prompt_tokens, loaded.device)
        full = torch.cat([ids, continuation.to(ids.device)[None]], dim=1)
        by_length.setdefault((ids.shape[1], len(continuation)), []).append(full)
    n_positions = 0
    with forward_hooks(hooks):
        for (prompt_len, n_generated), rows in by_length.items():
            read[:] = read_positions(positions, prompt_len, n_generated)
            n_positions += len(read) * len(rows)
            model(input_ids=torch.cat(rows), use_cache=False, logits_to_keep=1)
            if advance is not None:
                advance(len(rows))
    return totals, n_positions
