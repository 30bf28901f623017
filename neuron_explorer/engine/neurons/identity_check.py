"""The identity of METHOD §2, checked by other code than the recorder's.

From the recorder's means and the weights, each layer's MLP writes Σ_i p_i·ā_i + b·ŵ along the probe on average over
the recorded positions (with an output norm, the mean of m_i·s_t in place of ā_i). Here that write is measured where
the residual stream receives it, in a separate teacher-forced pass over the recorded tokens: prompts of equal length
together, so with no padding, their positions chosen by plain index arithmetic, and the write read as the block's output minus the
residual the MLP reads (less the attention output where both are added in parallel). A position bug in the recorder
(padding averaged in, a position off by one) leaves a residual here; one hook's input and output, compared with each
other, agree by linearity whatever was recorded.
"""

from __future__ import annotations

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

@dataclass
class IdentityCheck:
    prompts: list[int]  # the sampled prompt indices
    measured: np.ndarray  # (n_layers,) mean of (the MLP's write into the residual stream · ŵ) over their positions
    residual: np.ndarray  # (n_layers,) Σ_i p_i·ā_i(sample) + b·ŵ − measured
    n_positions: int  # positions the check read (the recorder read recording.sample.n_positions of them)


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


def check_identity(loaded: LoadedModel, texts: list[str], recording: Recording, unit_probe: np.ndarray,
                   weights: dict[str, np.ndarray], *, positions: str, max_prompt_tokens: int,
                   advance: Callable[[int], None] | None = None, ranks: Ranks = Ranks()) -> IdentityCheck:
    """Measure the sampled prompts of `recording` (pooled over the ranks, each rank measuring every world_size-th
    prompt) independently and compare with p and b·ŵ from `weights`."""
    prompts = recording.sample.prompts
    generated = torch.cat(recording.continuation_ids) if recording.continuation_ids else None
    mine = prompts[ranks.rank::ranks.world_size]
    continuations = [generated[i] if generated is not None else torch.zeros(0, dtype=torch.long) for i in mine]
    measured, n_positions = measure_mlp_writes(loaded, [texts[i] for i in mine], continuations, unit_probe,
                                               positions=positions, max_prompt_tokens=max_prompt_tokens,
                                               advance=advance)
    if ranks.world_size > 1:
        total = int(ranks.sum(n_positions))
        measured, n_positions = ranks.sum(measured * n_positions) / max(total, 1), total
    residual = identity_residuals(written_mean=recording.sample.written_mean(), p=weights["p"],
                                  bias_proj=weights["bias_proj"], measured=measured)
    return IdentityCheck(prompts=prompts, measured=measured, residual=residual, n_positions=n_positions)


@torch.inference_mode()
def measure_mlp_writes(loaded: LoadedModel, prompts: list[str], continuations: list[torch.Tensor],
                       unit_probe: np.ndarray, *, positions: str, max_prompt_tokens: int,
                       advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Per layer, the mean over the read positions of all prompts of (residual after the MLP − before) · ŵ, and the
    number of positions read. Each prompt is truncated as the recorder truncates it and followed by its continuation;
    sequences of the same length run as one batch (no padding, so every row reads the same positions)."""
    arch, model = loaded.arch, loaded.model
    n_layers = arch.n_layers(model)
    probe = torch.as_tensor(unit_probe, dtype=torch.float64)
    totals = np.zeros(n_layers)
    before: dict[int, torch.Tensor] = {}
    parallel: dict[int, torch.Tensor] = {}
    read: list[int] = []

    def keep(store: dict, layer: int, from_output: bool) -> Callable:
        def hook(module, inputs, output=None):
            value = output if from_output else inputs[0]
            store[layer] = value[0] if isinstance(value, tuple) else value
        return hook

    def measure(layer: int) -> Callable:
        def hook(module, inputs, output):
            after = output[0] if isinstance(output, tuple) else output
            write = after[:, read].double() - before[layer][:, read].double()
            if layer in parallel:
                write -= parallel[layer][:, read].double()
            totals[layer] += float((write @ probe.to(write.device)).sum())
        return hook

    modules = [arch.mlp_write_modules(model, layer) for layer in range(n_layers)]
    block_hooks = [(block, measure(layer)) for layer, (block, _, _) in enumerate(modules)]
    block_hooks += [(attention, keep(parallel, layer, True)) for layer, (_, _, attention) in enumerate(modules)
                    if attention is not None]
    input_hooks = [(pre_mlp, keep(before, layer, False)) for layer, (_, pre_mlp, _) in enumerate(modules)]
    by_length: dict[tuple[int, int], list[torch.Tensor]] = {}
    for text, continuation in zip(prompts, continuations):
        ids, _ = encode_prompts(loaded.tokenizer, [text], max_prompt_tokens, loaded.device)
        full = torch.cat([ids, continuation.to(ids.device)[None]], dim=1)
        by_length.setdefault((ids.shape[1], len(continuation)), []).append(full)
    n_positions = 0
    with forward_hooks(input_hooks, pre=True), forward_hooks(block_hooks):
        for (prompt_len, n_generated), rows in by_length.items():
            read[:] = read_positions(positions, prompt_len, n_generated)
            n_positions += len(read) * len(rows)
            model(input_ids=torch.cat(rows), use_cache=False, logits_to_keep=1)
            if advance is not None:
                advance(len(rows))
    return totals / max(n_positions, 1), n_positions
