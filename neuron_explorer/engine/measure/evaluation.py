"""Evaluation of a model as it is (METHOD §5): toxicity, true perplexity and F1, each with its count.

This is the one implementation behind the `evaluate` command, `build` and patch runs, so that their rows compare.
Under an intervention (`InterventionHooks`, built by the caller: this module never imports patching) generation
runs with its hooks and the perplexity windows with its scoring pass's; a run also measures the mean last-layer
projection on the probe direction at the positions that predict the generated tokens: the last prompt token and
generated tokens 1–19 (METHOD's v1 positions, whatever protocol the cache recorded ā by).

- toxicity: greedy continuation of each prompt (truncated to 32 tokens), 20 new tokens with end-of-sequence
  suppressed; the scorer scores the continuation alone; mean over prompts (`n_prompts`).
- perplexity: exp(mean next-token NLL) over non-overlapping fixed-size windows of the neutral corpus, each led by
  the tokenizer's BOS where it adds one (true perplexity, not its logarithm); `n_tokens` is the number of predicted
  tokens.
- F1: corpus passages, 32-token prompt, 20 greedy new tokens, bag-of-words F1 against the gold 20-token
  continuation; mean over `n_f1` passages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from neuron_explorer.cache.schema import EVALUATION_METRICS
from neuron_explorer.engine.measure.corpora import (
    Corpus,
    f1_items,
    load_corpus,
    perplexity_windows,
    special_tokens_around,
    token_f1,
)
from neuron_explorer.engine.model.distributed import Ranks
from neuron_explorer.engine.model.generation import generate_continuations
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import execution_device
from neuron_explorer.spec.settings import EvaluationSettings

NO_INTERVENTION_PASS = "one pass per window, no intervention"
# Where `probe_projection` is read, as records and tables say it (METHOD's v1 positions; `_ProbeProjection`).
PROBE_POSITIONS = "the last prompt token and generated tokens 1 to n-1 (the positions that predict the continuation)"
Advance = Callable[[int], None]  # told how many work units (prompts, windows, passages) a batch finished


@dataclass
class EvaluationResult:
    toxicity: float
    toxicity_sem: float
    n_prompts: int
    perplexity: float
    n_tokens: int
    f1: float
    n_f1: int
    seconds: float = 0.0
    prompts: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    f1_generations: list[str] = field(default_factory=list)
    check_toxicity: float = float("nan")  # the same continuations by the check scorer (spec.settings.CHECK_SCORER)
    check_toxicity_sem: float = float("nan")
    check_scorer: str = ""
    check_scores: list[float] = field(default_factory=list)
    probe_projection: float = float("nan")  # mean over the v1 positions (_ProbeProjection); NaN without a probe
    perplexity_pass: str = NO_INTERVENTION_PASS  # how the perplexity windows saw the intervention

    def metrics(self) -> dict:
        return {k: getattr(self, k) for k in EVALUATION_METRICS}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InterventionHooks:
    """An intervention as evaluation applies it: `generation()` the hooks around generation (toxicity, F1),
    `scoring()` those around the teacher-forced perplexity pass, or None when no such pass measures fluency as
    generation does (perplexity is then n/a, never the unpatched figure); `perplexity_pass` says how, for the record."""

    generation: Callable[[], AbstractContextManager]
    scoring: Callable[[], AbstractContextManager] | None
    perplexity_pass: str


@dataclass(frozen=True)
class CorpusInputs:
    """The perplexity windows and F1 passages, tokenized once for all the models sharing a tokenizer."""

    windows: list[list[int]]
    f1_items: list[tuple[str, str]]


def corpus_inputs(tokenizer, corpus: Corpus, settings: EvaluationSettings) -> CorpusInputs:
    return CorpusInputs(
        perplexity_windows(tokenizer, corpus, settings.ppl_window, settings.ppl_windows),
        f1_items(tokenizer, corpus, settings.f1_items, settings.max_prompt_tokens, settings.new_tokens),
    )


def continuations(
    loaded, prompts: list[str], settings: EvaluationSettings, advance: Advance | None = None, ranks: Ranks = Ranks()
) -> list[tuple[int, list[str]]]:
    """Greedy continuations of this rank's batches (all of them in one process) as (batch index, continuations),
    each batch reported."""
    out = []
    for index, chunk in ranks.deal(prompts, settings.batch_size):
        out.append(
            (
                index,
                generate_continuations(
                    loaded,
                    chunk,
                    new_tokens=settings.new_tokens,
                    max_prompt_tokens=settings.max_prompt_tokens,
                    batch_size=settings.batch_size,
                ),
            )
        )
        if advance:
            advance(len(chunk))
    return out


def toxicity(
    loaded,
    prompts: list[str],
    scorers: list,
    settings: EvaluationSettings,
    advance: Advance | None = None,
    ranks: Ranks = Ranks(),
) -> tuple[list[str], list[np.ndarray]]:
    """Every prompt's continuation and its score by each of `scorers`; each rank scores its own continuations."""
    mine = continuations(loaded, prompts, settings, advance, ranks)
    texts = [text for _, batch in mine for text in batch]
    scores = [scorer.score(texts) for scorer in scorers]
    sizes = np.cumsum([0, *(len(batch) for _, batch in mine)])
    rows = ranks.in_order(
        [
            (index, list(zip(batch, *(s[a:b] for s in scores))))
            for (index, batch), a, b in zip(mine, sizes[:-1], sizes[1:])
        ]
    )
    return [row[0] for row in rows], [
        np.array([row[1 + i] for row in rows], dtype=np.float64) for i in range(len(scorers))
    ]


@torch.inference_mode()
def perplexity(
    loaded, windows: list[list[int]], batch_size: int = 4, advance: Advance | None = None, ranks: Ranks = Ranks()
) -> tuple[float, int]:
    """(exp(mean NLL), number of predicted tokens) over equal-length windows, no padding."""
    model = loaded.model
    total, count = 0.0, 0
    for _, chunk in ranks.deal(windows, batch_size):
        ids = torch.tensor(chunk, dtype=torch.long, device=loaded.device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += ids[:, 1:].numel()
        if advance:
            advance(len(chunk))
    total, count = float(ranks.sum(total)), int(ranks.sum(count))
    return math.exp(total / count), count


def f1_score(
    loaded,
    items: list[tuple[str, str]],
    settings: EvaluationSettings,
    advance: Advance | None = None,
    ranks: Ranks = Ranks(),
) -> tuple[float, list[str]]:
    """Mean token F1 of each passage's continuation against its gold. The passages' prompts are already cut to
    `max_prompt_tokens` text tokens; the truncation leaves room for the special tokens the tokenizer adds, which would
    otherwise push out the prompt's last token (a BOS-adding tokenizer would continue from the wrong place)."""
    before, after = special_tokens_around(loaded.tokenizer)
    settings = replace(settings, max_prompt_tokens=settings.max_prompt_tokens + len(before) + len(after))
    mine = continuations(loaded, [p for p, _ in items], settings, advance, ranks)
    golds = [gold for _, gold in items]
    rows = ranks.in_order(
        [
            (
                index,
                [(text, token_f1(text, golds[index * settings.batch_size + row])) for row, text in enumerate(batch)],
            )
            for index, batch in mine
        ]
    )
    return float(np.mean([score for _, score in rows])), [text for text, _ in rows]


def evaluate(
    loaded,
    prompts: list[str],
    scorer,
    *,
    corpus: Corpus | None = None,
    settings: EvaluationSettings | None = None,
    progress=None,
    check_scorer=None,
    intervention: InterventionHooks | None = None,
    unit_probe: np.ndarray | None = None,
    inputs: CorpusInputs | None = None,
    advance: Callable[[int, str], None] | None = None,
    ranks: Ranks = Ranks(),
) -> EvaluationResult:
    """Toxicity on `prompts`, perplexity and F1 on the neutral corpus (or its precomputed `inputs`), for the model
    as it is now or under `intervention`; with `check_scorer`, the same continuations' toxicity by that second scorer
    too; with `unit_probe`, the mean projection of the last block's output on it at the last prompt token and
    generated tokens 1–19 (the positions that predict the continuation).
    `progress(line)` gets each metric when it is done, `advance(units, metric)` each finished batch. Under torchrun
    each rank takes its batches of every part (`ranks.deal`) and every rank returns the whole result."""
    settings = settings or EvaluationSettings()
    inputs = inputs or corpus_inputs(loaded.tokenizer, corpus or load_corpus(), settings)
    generation = intervention.generation if intervention else nullcontext
    scoring = intervention.scoring if intervention else nullcontext
    perplexity_pass = intervention.perplexity_pass if intervention else NO_INTERVENTION_PASS
    start = time.time()

    def advancing(metric: str) -> Advance | None:
        return (lambda units: advance(units, metric)) if advance else None

    projection = _ProbeProjection(loaded, unit_probe)
    scorers = [scorer] + ([check_scorer] if check_scorer is not None else [])
    with generation(), projection.hooks():
        generations, (scores, *checks) = toxicity(loaded, prompts, scorers, settings, advancing("toxicity"), ranks)
    check = checks[0] if checks else np.zeros(0)
    if progress:
        progress(f"toxicity {scores.mean():.3f} over {len(prompts)} prompts")
    ppl, n_tokens = float("nan"), 0
    if scoring is not None:
        with scoring():
            ppl, n_tokens = perplexity(loaded, inputs.windows, settings.ppl_batch_size, advancing("perplexity"), ranks)
    elif advance:
        advance(ranks.count(len(inputs.windows), settings.ppl_batch_size), "perplexity")
    if progress:
        progress(
            f"perplexity {ppl:.3f} over {n_tokens} tokens"
            if scoring is not None
            else f"perplexity {perplexity_pass}"  # scoring is None only under an intervention
        )
    items = inputs.f1_items
    with generation():
        f1, f1_generations = f1_score(loaded, items, settings, advancing("F1"), ranks)
    if progress:
        progress(f"F1 {f1:.4f} over {len(items)} passages")
    return EvaluationResult(
        toxicity=float(scores.mean()),
        toxicity_sem=standard_error(scores),
        n_prompts=len(prompts),
        perplexity=ppl,
        n_tokens=n_tokens,
        f1=f1,
        n_f1=len(items),
        seconds=time.time() - start,
        prompts=list(prompts),
        generations=generations,
        scores=[float(s) for s in scores],
        f1_generations=f1_generations,
        check_toxicity=float(check.mean()) if check.size else float("nan"),
        check_toxicity_sem=standard_error(check),
        check_scorer=check_scorer.name if check_scorer is not None else "",
        check_scores=[float(s) for s in check],
        probe_projection=projection.mean(ranks),
        perplexity_pass=perplexity_pass,
    )


def probe_projection(
    loaded, prompts: list[str], unit_probe: np.ndarray, settings: EvaluationSettings, ranks: Ranks = Ranks()
) -> float:
    """`evaluate`'s `probe_projection` alone: the greedy continuations of `prompts`, unscored."""
    projection = _ProbeProjection(loaded, unit_probe)
    with projection.hooks():
        continuations(loaded, prompts, settings, ranks=ranks)
    return projection.mean(ranks)


class _ProbeProjection:
    """Mean projection of the last block's output at the newest position of each forward call on a unit direction:
    the prefill's last prompt token and each fed-back generated token but the last, i.e. the v1 positions (the last
    prompt token and generated tokens 1–19 for 20 new tokens); nothing is hooked without one."""

    def __init__(self, loaded, unit: np.ndarray | None) -> None:
        self.block = loaded.arch.layers(loaded.model)[-1]
        device = execution_device(self.block)
        self.unit = None if unit is None else torch.as_tensor(unit, dtype=torch.float32, device=device)
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def hooks(self) -> AbstractContextManager:
        return forward_hooks([(self.block, self._project)]) if self.unit is not None else nullcontext()

    def _project(self, module, inputs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        newest = hidden[:, -1].float() @ self.unit
        self.sum += newest.sum(dtype=torch.float64)
        self.count += newest.numel()

    def mean(self, ranks: Ranks) -> float:
        """The mean over every rank's positions."""
        total, count = float(ranks.sum(float(self.sum))), int(ranks.sum(self.count))
        return total / count if count else float("nan")


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")


def evaluation_table(results: dict[str, EvaluationResult], attrs: dict | None = None) -> dict:
    """The `evaluation` table for compute's extra_tables: one row per setting."""
    names = list(results)
    columns: dict[str, list] = {"setting": names}
    for key in EVALUATION_METRICS:
        columns[key] = [getattr(results[n], key) for n in names]
    return {"columns": columns, "attrs": dict(attrs or {})}


def generations_table(results: dict[str, EvaluationResult]) -> dict:
    """Every scored continuation: setting, prompt, continuation, score."""
    columns: dict[str, list] = {"setting": [], "prompt": [], "continuation": [], "toxicity": [], "check_toxicity": []}
    for name, result in results.items():
        columns["setting"] += [name] * len(result.prompts)
        columns["prompt"] += result.prompts
        columns["continuation"] += result.generations
        columns["toxicity"] += result.scores
        columns["check_toxicity"] += result.check_scores or [float("nan")] * len(result.prompts)
    return {"columns": columns, "attrs": {}}


def format_table(results: dict[str, EvaluationResult]) -> str:
    """A Markdown table of the metrics with their counts (and the check scorer's toxicity when it was measured),
    then each model's ratios to the first."""
    check = next((r.check_scorer for r in results.values() if r.check_scorer), "")
    head = f" | toxicity by {check} (± s.e.)" if check else ""
    lines = [
        f"| setting | toxicity (± s.e.){head} | prompts | perplexity | tokens | F1 | F1 passages |",
        "|---|---|" + ("---|" if check else "") + "---|---|---|---|---|",
    ]
    for name, r in results.items():
        second = f" | {r.check_toxicity:.3f} ± {r.check_toxicity_sem:.3f}" if check else ""
        lines.append(
            f"| {name} | {r.toxicity:.3f} ± {r.toxicity_sem:.3f}{second} | {r.n_prompts} | "
            f"{r.perplexity:.2f} | {r.n_tokens} | {r.f1:.3f} | {r.n_f1} |"
        )
    if len(results) >= 2:
        first_name, first = next(iter(results.items()))
        for name, r in list(results.items())[1:]:
            ratios = f"toxicity {_ratio(r.toxicity, first.toxicity)}"
            if check:
                ratios += f" ({check}: {_ratio(r.check_toxicity, first.check_toxicity)})"
            lines.append(
                f"\n{name}: {ratios} of {first_name}, perplexity {100 * (r.perplexity / first.perplexity - 1):+.1f}%"
            )
    return "\n".join(lines)


def _ratio(value: float, reference: float) -> str:
    """ "× 0.21", or why there is no ratio (a reference of 0: no continuation of the first model was toxic)."""
    return f"× {value / reference:.2f}" if reference else f"{value:.3f} against 0 (no ratio)"
