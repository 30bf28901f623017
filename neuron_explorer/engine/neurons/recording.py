"""Recording every MLP neuron's activation while the model generates (the hot path).

One forward hook per layer on the MLP output projection reads its input, the activation vector m (B, T, d_mlp), and
sums it over the selected positions into per-prompt buffers on the device; nothing of size prompts × tokens × neurons
is ever held. Where an output norm sits between the MLP and the residual stream (Gemma-2), the hook also sums
m_i·s_t, with s_t the norm's 1/rms of the token's MLP output, since that is what scales the neuron's write. At the end
of each batch the per-prompt means go to a sink (the cache's chunked prompts × layers × neurons dataset), the batch
sums are added to float64 totals on the device (`compute` pools the per-prompt means again, by another path, in
`PromptMeans`, to check those totals).

Positions (``--positions``, described in ``spec.settings.POSITION_PROTOCOLS``), N = `new_tokens`:
  generated   the N generated tokens' own positions (Yang v3's HF code); read during cached generation with one extra
              single-token step that consumes the last generated token; the prefill reads nothing
  predicting  the last prompt position and generated tokens 1..N−1: the positions whose next-token predictions
              produced the N tokens (Yang v1's TransformerLens loop, which reads the last position of N passes)
  prompt      every real (non-padding) prompt position, one forward pass, no generation
  all         every real prompt position and the N generated tokens' own positions
With the other model's tokens (``--shared-continuation``) one teacher-forced pass per batch reads the same positions.

The recorder does not check itself: engine/neurons/identity_check.py measures the residual stream in a separate pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from neuron_explorer.engine.model.distributed import Ranks
from neuron_explorer.engine.model.generation import encode_prompts, generate_tokens, special_token_ids
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import LoadedModel, execution_device
from neuron_explorer.spec.settings import POSITION_MODES, RecordingSettings


@dataclass(frozen=True)
class Protocol:
    """The positions a mode reads: a part of the prompt, then the positions of the generated tokens fed back."""

    prompt: str  # "none", "last" or "real" (every non-padding position)
    generates: bool
    feeds_last: bool  # the last generated token is fed back too, so its own position is read


PROTOCOLS = {
    "generated": Protocol("none", generates=True, feeds_last=True),
    "predicting": Protocol("last", generates=True, feeds_last=False),
    "prompt": Protocol("real", generates=False, feeds_last=False),
    "all": Protocol("real", generates=True, feeds_last=True),
}


class PromptMeans:
    """The per-prompt means as they reach the file, pooled in float64 and weighted by each prompt's position count:
    over every prompt, and over the identity check's sample.

    The published ā comes from the recorder's running totals; these sums come from the per-prompt means, by another
    path (under torchrun: gathered to rank 0 batch by batch, where the totals are all-reduced). `compute` compares the
    two, so a batch dropped from or counted twice in the totals shows, and the identity check's independent pass
    compares the sample's means with what it measures.
    """

    def __init__(self, n_layers: int, d_mlp: int, scales_write: bool, sample: Iterable[int] = ()):
        self.sample = set(int(i) for i in sample)
        self.prompts: list[int] = []
        self.n_positions = {"all": 0, "sample": 0}
        self._act = {part: np.zeros((n_layers, d_mlp)) for part in self.n_positions}
        self._written = {part: np.zeros((n_layers, d_mlp)) for part in self.n_positions} if scales_write else None

    def add(self, start: int, act: np.ndarray, written: np.ndarray | None, counts: np.ndarray) -> None:
        """One batch: (B, n_layers, d_mlp) means of m and (with an output norm) of m·s_t, and (B,) position counts."""
        for row, count in enumerate(np.asarray(counts, dtype=np.float64)):
            self.prompts.append(start + row)
            parts = ("all", "sample") if start + row in self.sample else ("all",)
            for part in parts:
                self.n_positions[part] += int(count)
                self._act[part] += count * act[row].astype(np.float64)
                if self._written is not None:
                    if written is None:
                        raise ValueError("an output norm scales the writes: each batch needs its means of m·s_t")
                    self._written[part] += count * written[row].astype(np.float64)

    def act_mean(self, part: str = "all") -> np.ndarray:
        """(n_layers, d_mlp) ā over the part's recorded positions."""
        return self._act[part] / max(self.n_positions[part], 1)

    def written_mean(self, part: str = "all") -> np.ndarray:
        """(n_layers, d_mlp) mean of what scales each neuron's write: m·s_t with an output norm, else m."""
        return self.act_mean(part) if self._written is None else self._written[part] / max(self.n_positions[part], 1)


@dataclass
class Recording:
    """Totals of one model over all prompts (of this rank's batches, until `pooled`), in float64."""

    act_mean: np.ndarray  # (n_layers, d_mlp): ā over all recorded positions
    written_mean: np.ndarray | None  # (n_layers, d_mlp): mean of m·s_t (output-norm architectures), else None
    n_positions: int
    batches: list[tuple[int, int]] = field(default_factory=list)  # (batch index, prompts) of the batches recorded
    continuation_ids: list[torch.Tensor] = field(default_factory=list)  # per batch, (B, new_tokens) on the CPU
    continuations: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)

    def pooled(self, ranks: Ranks) -> Recording:
        """The recording of every rank's batches, on every rank: sums added, per-batch lists in batch order."""
        if ranks.world_size == 1:
            return self
        n_positions = int(ranks.sum(self.n_positions))

        def mean(local: np.ndarray) -> np.ndarray:
            return ranks.sum(local * self.n_positions) / max(n_positions, 1)

        sizes = [size for _, size in self.batches]
        batch_ids: Sequence[torch.Tensor | None] = self.continuation_ids or [None] * len(sizes)
        local = zip(
            self.batches,
            batch_ids,
            _split(self.continuations, sizes) if self.continuations else [[]] * len(sizes),
            _split(self.prompt_tokens, sizes),
        )
        parts = ranks.in_order([(batch[0], [(batch, *rest)]) for batch, *rest in local])
        return Recording(
            act_mean=mean(self.act_mean),
            written_mean=None if self.written_mean is None else mean(self.written_mean),
            n_positions=n_positions,
            batches=[batch for batch, *_ in parts],
            continuation_ids=[ids for _, ids, _, _ in parts if ids is not None],
            continuations=[text for _, _, texts, _ in parts for text in texts],
            prompt_tokens=[n for *_, tokens in parts for n in tokens],
        )


def _split(items: list, sizes: list[int]) -> list[list]:
    starts = np.cumsum([0, *sizes])
    return [items[a:b] for a, b in zip(starts[:-1], starts[1:])]


class ActivationRecorder:
    """Sums of activations (and, with an output norm, of m·s_t) per prompt, over the positions chosen by `select`."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        arch, model = loaded.arch, loaded.model
        self.modules = [arch.out_proj(model, layer) for layer in range(arch.n_layers(model))]
        self.devices = [execution_device(m) for m in self.modules]  # never `meta`: offloaded layers too
        self.scales_write = arch.output_norm_path is not None
        self.d_mlp = arch.d_mlp(model)
        self.act_total = [torch.zeros(self.d_mlp, dtype=torch.float64, device=d) for d in self.devices]
        self.written_total = (
            [torch.zeros(self.d_mlp, dtype=torch.float64, device=d) for d in self.devices] if self.scales_write else []
        )
        self.n_positions = 0
        self._selection: int | torch.Tensor = 0
        self._batch_act: list[torch.Tensor] = []
        self._batch_written: list[torch.Tensor] = []
        self._batch_count: torch.Tensor | None = None

    def hooks(self):
        """The context manager that installs the recording hooks and always removes them."""
        return forward_hooks([(module, self._make_hook(layer)) for layer, module in enumerate(self.modules)])

    def _make_hook(self, layer: int) -> Callable:
        arch, model = self.loaded.arch, self.loaded.model

        def hook(module, inputs, output):
            if isinstance(self._selection, int) and self._selection == 0:
                return
            acts = inputs[0]
            self._batch_act[layer] += self.selected_sum(acts)
            if self.scales_write:
                scale = arch.output_norm_scale(model, layer, output)
                self._batch_written[layer] += self.selected_sum(acts.float() * scale[..., None])

        return hook

    def selected_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of (B, T, ...) values over the selected positions of each row, in float32: (B, ...)."""
        selection = self._selection
        if isinstance(selection, int):
            return values[:, -selection:].sum(1, dtype=torch.float32)
        return torch.einsum("bt...,bt->b...", values.float(), selection.to(values.device))

    def start_batch(self, batch_size: int) -> None:
        self._batch_act = [torch.zeros(batch_size, self.d_mlp, device=d) for d in self.devices]
        self._batch_written = (
            [torch.zeros(batch_size, self.d_mlp, device=d) for d in self.devices] if self.scales_write else []
        )
        self._batch_count = torch.zeros(batch_size, dtype=torch.float64)

    def _counts(self) -> torch.Tensor:
        """The batch's (B,) position counts, float64 on the CPU."""
        if self._batch_count is None:
            raise RuntimeError("start_batch comes first: it makes the batch's position counts")
        return self._batch_count

    def select(self, selection: int | torch.Tensor) -> None:
        """Record the last `selection` positions of each row (int; 0 records nothing) or the positions weighted by a
        (B, T) 0/1 mask, in the forward calls that follow."""
        self._selection = selection
        count = self._counts()  # added to in place
        if isinstance(selection, int):
            count += selection
        else:
            count += selection.sum(1).double().cpu()

    def end_batch(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Add the batch to the totals; return its per-prompt means of m and (with an output norm) of m·s_t, each
        (B, n_layers, d_mlp) float32, and the per-prompt position counts."""
        count = self._counts()
        for totals, sums in ((self.act_total, self._batch_act), (self.written_total, self._batch_written)):
            for total, batch in zip(totals, sums):
                total += batch.sum(0, dtype=torch.float64)
        self.n_positions += int(count.sum())
        divisor = count.clamp(min=1).float()[:, None, None]

        def means(sums: list[torch.Tensor]) -> np.ndarray:
            return (torch.stack([s.cpu() for s in sums], dim=1) / divisor).numpy()

        return means(self._batch_act), means(self._batch_written) if self.scales_write else None, count.numpy()

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """ā and (with an output norm) the mean of m·s_t over every recorded position, (n_layers, d_mlp) each."""
        n = max(self.n_positions, 1)

        def mean(totals: list[torch.Tensor]) -> np.ndarray:
            return torch.stack([t.cpu() for t in totals]).numpy() / n

        return mean(self.act_total), mean(self.written_total) if self.scales_write else None


def record_model(
    loaded: LoadedModel,
    texts: list[str],
    *,
    positions: str = RecordingSettings.positions,
    new_tokens: int = RecordingSettings.new_tokens,
    max_prompt_tokens: int = RecordingSettings.max_prompt_tokens,
    batch_size: int = RecordingSettings.batch_size,
    teacher_tokens: list[torch.Tensor] | None = None,
    sink: Callable[[int, np.ndarray, np.ndarray | None, np.ndarray], None] | None = None,
    advance: Callable[[int], None] | None = None,
    ranks: Ranks = Ranks(),
) -> Recording:
    """Record one model over all prompts (under torchrun: this rank's batches; `Recording.pooled` adds the ranks
    up); `sink(start, act, written, counts)` gets each batch's per-prompt means and position counts
    (`ActivationRecorder.end_batch`).

    With `teacher_tokens` (the other model's continuation ids, one tensor per batch of all prompts) the model reads
    those tokens instead of generating its own (``--shared-continuation``), in a single forward pass per batch.
    """
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}")
    protocol = PROTOCOLS[positions]
    recorder = ActivationRecorder(loaded)
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    suppress = special_token_ids(tokenizer)
    n_fed = new_tokens if protocol.feeds_last else max(new_tokens - 1, 0)
    continuation_ids, prompt_tokens, recorded = [], [], []
    with recorder.hooks(), torch.inference_mode():
        for batch_index, chunk in ranks.deal(texts, batch_size):
            start = batch_index * batch_size
            recorded.append((batch_index, len(chunk)))
            ids, mask = encode_prompts(tokenizer, chunk, max_prompt_tokens, device)
            prompt_tokens.extend(mask.sum(1).tolist())
            recorder.start_batch(len(chunk))
            prompt_parts: dict[str, int | torch.Tensor] = {"none": 0, "last": 1, "real": mask.float()}
            prompt_part = prompt_parts[protocol.prompt]
            if not protocol.generates:
                recorder.select(prompt_part)
                model(
                    input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False, logits_to_keep=1
                )
            elif teacher_tokens is not None:
                fed = teacher_tokens[batch_index].to(device)[:, :n_fed]
                full_ids = torch.cat([ids, fed], dim=1)
                full_mask = torch.cat([mask, torch.ones_like(fed)], dim=1)
                if isinstance(prompt_part, int):
                    recorder.select(prompt_part + fed.shape[1])
                else:
                    recorder.select(torch.cat([prompt_part, torch.ones_like(fed, dtype=torch.float32)], dim=1))
                model(
                    input_ids=full_ids,
                    attention_mask=full_mask,
                    position_ids=_positions(full_mask),
                    use_cache=False,
                    logits_to_keep=1,
                )
                continuation_ids.append(teacher_tokens[batch_index].cpu())
            else:

                def before_forward(step: int, prompt_part: int | torch.Tensor = prompt_part) -> None:
                    recorder.select(prompt_part if step == 0 else 1)

                tokens = generate_tokens(
                    model,
                    ids,
                    mask,
                    new_tokens,
                    suppress_ids=suppress,
                    before_forward=before_forward,
                    feed_last=protocol.feeds_last,
                )
                continuation_ids.append(tokens.cpu())
            act, written, counts = recorder.end_batch()
            if sink is not None:
                sink(start, act, written, counts)
            if advance is not None:
                advance(len(chunk))
    act_mean, written_mean = recorder.result()
    continuations = [text for ids in continuation_ids for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return Recording(
        act_mean=act_mean,
        written_mean=written_mean,
        n_positions=recorder.n_positions,
        batches=recorded,
        continuation_ids=continuation_ids,
        continuations=continuations,
        prompt_tokens=prompt_tokens,
    )


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
