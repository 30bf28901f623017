"""Recording every MLP neuron's activation while the model generates (the hot path).

One forward hook per layer on the MLP output projection sees both sides of the identity at once: its input is the
activation vector m (B, T, d_mlp) and its output the MLP output. The hook sums m and (output · ŵ) over the selected
positions into per-prompt buffers on the device; nothing of size prompts × tokens × neurons is ever held. At the end
of each batch the per-prompt means go to a sink (the cache's chunked prompts × layers × neurons dataset) and the
batch sums are added to float64 totals, still on the device.

Positions (``--positions``):
  generated  the paper's v3 protocol: the positions whose next-token prediction produced the new tokens (the last
             prompt position, then each generated token but the last), i.e. what `new_tokens` uncached passes that
             read the last position see; recorded during cached generation, not in a second pass
  prompt     every real (non-padding) prompt position, one forward pass, no generation
  all        both
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .generation import special_token_ids, batches, encode_prompts, generate_tokens
from .defaults import POSITION_MODES
from .hooks import forward_hooks
from .models import LoadedModel



@dataclass
class Recording:
    """Totals of one model over all prompts, in float64."""
    act_mean: np.ndarray  # (n_layers, d_mlp): ā over all recorded positions
    mlp_proj: np.ndarray  # (n_layers,): measured mean of (MLP output · ŵ) over the same positions
    n_positions: int
    continuation_ids: list[torch.Tensor] = field(default_factory=list)  # per batch, (B, new_tokens) on the CPU
    continuations: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)


class ActivationRecorder:
    """Sums of activations and of the MLP-output projection per prompt, over the positions chosen by `select`."""

    def __init__(self, loaded: LoadedModel, unit_probe: np.ndarray):
        self.loaded = loaded
        arch, model = loaded.arch, loaded.model
        self.modules = [arch.out_proj(model, layer) for layer in range(arch.n_layers(model))]
        self.probe = [torch.as_tensor(unit_probe, dtype=torch.float32, device=m.weight.device) for m in self.modules]
        self.d_mlp = arch.d_mlp(model)
        self.act_total = [torch.zeros(self.d_mlp, dtype=torch.float64, device=m.weight.device) for m in self.modules]
        self.proj_total = [torch.zeros((), dtype=torch.float64, device=m.weight.device) for m in self.modules]
        self.n_positions = 0
        self._selection: int | torch.Tensor | None = None
        self._batch_act: list[torch.Tensor] = []
        self._batch_proj: list[torch.Tensor] = []
        self._batch_count: torch.Tensor | None = None

    def hooks(self):
        """The context manager that installs the recording hooks and always removes them."""
        return forward_hooks([(module, self._make_hook(layer)) for layer, module in enumerate(self.modules)])

    def _make_hook(self, layer: int) -> Callable:
        def hook(module, inputs, output):
            acts, proj = inputs[0], output.float() @ self.probe[layer]
            selection = self._selection
            if selection is None:
                act_sum, proj_sum = acts.sum(1, dtype=torch.float32), proj.sum(1)
            elif isinstance(selection, int):
                act_sum, proj_sum = acts[:, -selection:].sum(1, dtype=torch.float32), proj[:, -selection:].sum(1)
            else:
                weights = selection.to(acts.device)
                act_sum = torch.einsum("btn,bt->bn", acts.float(), weights)
                proj_sum = (proj * weights).sum(1)
            self._batch_act[layer] += act_sum
            self._batch_proj[layer] += proj_sum
        return hook

    def start_batch(self, batch_size: int) -> None:
        self._batch_act = [torch.zeros(batch_size, self.d_mlp, device=p.device) for p in self.probe]
        self._batch_proj = [torch.zeros(batch_size, device=p.device) for p in self.probe]
        self._batch_count = torch.zeros(batch_size, dtype=torch.float64)

    def select(self, selection: int | torch.Tensor | None, seq_len: int) -> None:
        """Record the last `selection` positions (int), the positions weighted by a (B, T) 0/1 mask, or all (None)."""
        self._selection = selection
        if selection is None:
            self._batch_count += seq_len
        elif isinstance(selection, int):
            self._batch_count += selection
        else:
            self._batch_count += selection.sum(1).double().cpu()

    def end_batch(self) -> np.ndarray:
        """Add the batch to the totals; return its per-prompt mean activations (B, n_layers, d_mlp), float32."""
        count = self._batch_count
        for layer, (acts, proj) in enumerate(zip(self._batch_act, self._batch_proj)):
            self.act_total[layer] += acts.sum(0, dtype=torch.float64)
            self.proj_total[layer] += proj.sum(0, dtype=torch.float64)
        self.n_positions += int(count.sum())
        means = torch.stack([acts.cpu() for acts in self._batch_act], dim=1)
        return (means / count.clamp(min=1).float()[:, None, None]).numpy()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.n_positions, 1)
        act = torch.stack([t.cpu() for t in self.act_total]).numpy() / n
        proj = torch.stack([t.cpu() for t in self.proj_total]).numpy() / n
        return act, proj


def record_model(loaded: LoadedModel, texts: list[str], unit_probe: np.ndarray, *, positions: str = "generated",
                 new_tokens: int = 20, max_prompt_tokens: int = 32, batch_size: int = 16,
                 teacher_tokens: list[torch.Tensor] | None = None,
                 sink: Callable[[int, np.ndarray], None] | None = None,
                 advance: Callable[[int], None] | None = None) -> Recording:
    """Record one model over all prompts.

    With `teacher_tokens` (the other model's continuation ids, one tensor per batch) the model reads those tokens
    instead of generating its own (``--shared-continuation``), in a single forward pass per batch.
    """
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}")
    recorder = ActivationRecorder(loaded, unit_probe)
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    suppress = special_token_ids(tokenizer)
    continuation_ids, prompt_tokens = [], []
    with recorder.hooks(), torch.inference_mode():
        for batch_index, (start, chunk) in enumerate(batches(texts, batch_size)):
            ids, mask = encode_prompts(tokenizer, chunk, max_prompt_tokens, device)
            prompt_tokens.extend(mask.sum(1).tolist())
            recorder.start_batch(len(chunk))
            if positions == "prompt":
                recorder.select(mask.float(), ids.shape[1])
                model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False,
                      logits_to_keep=1)
            elif teacher_tokens is not None:
                fed = teacher_tokens[batch_index].to(device)[:, :-1]
                full_ids = torch.cat([ids, fed], dim=1)
                full_mask = torch.cat([mask, torch.ones_like(fed)], dim=1)
                if positions == "generated":
                    recorder.select(new_tokens, full_ids.shape[1])
                else:
                    recorder.select(full_mask.float(), full_ids.shape[1])
                model(input_ids=full_ids, attention_mask=full_mask, position_ids=_positions(full_mask),
                      use_cache=False, logits_to_keep=1)
                continuation_ids.append(teacher_tokens[batch_index].cpu())
            else:
                def before_forward(step: int) -> None:
                    if step > 0:
                        recorder.select(None, 1)
                    elif positions == "generated":
                        recorder.select(1, ids.shape[1])
                    else:
                        recorder.select(mask.float(), ids.shape[1])

                tokens = generate_tokens(model, ids, mask, new_tokens, suppress_ids=suppress,
                                         before_forward=before_forward)
                continuation_ids.append(tokens.cpu())
            means = recorder.end_batch()
            if sink is not None:
                sink(start, means)
            if advance is not None:
                advance(len(chunk))
    act_mean, mlp_proj = recorder.result()
    continuations = [text for ids in continuation_ids for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return Recording(act_mean=act_mean, mlp_proj=mlp_proj, n_positions=recorder.n_positions,
                     continuation_ids=continuation_ids, continuations=continuations, prompt_tokens=prompt_tokens)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
