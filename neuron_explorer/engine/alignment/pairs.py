"""Preference pairs in the style of Lee et al. (METHOD §6), made offline.

For each prompt (truncated to 32 tokens), candidates are the base model's greedy 20-token continuation and
continuations sampled from it:
- chosen   = the greedy continuation (Lee et al.), or with `chosen="least-toxic"` the least toxic candidate (the
  greedy one unless a sample scores clearly lower): prompts whose greedy continuation is itself toxic, exactly
  where the model needs to change, then still yield a pair;
- rejected = the most toxic of the candidates, by the scorer:
  * `best-of-n`: n continuations sampled from the base model (temperature, top-k), and/or
  * `steer`: continuations sampled while the base model is steered along the probe direction. This is the
    PPLM-like method: PPLM ascends the gradient of an attribute classifier with respect to the hidden state; for a
    linear probe on the mean-pooled last-layer residual, that gradient is the probe direction itself, so one PPLM
    step is adding `strength * mean‖h‖ * ŵ` to the residual stream (here: at the output of the last
    `steer_layers` blocks, every position). Unlike PPLM we take no KL/fluency step; sampling keeps it fluent.
Only pairs whose rejected score exceeds the chosen score by at least `margin` are kept.

Candidates (greedy + samples, with scores) are generated once and reused: they are also the offline labelled data
of the probe (see probe_training.py).

Prompts can also come from the base model itself (`sample_openings`): seeds cut from the training templates are
continued at a high temperature, so the pairs cover openings in the model's own words, registers and topics rather
than one hand-written template family.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuron_explorer.cache.atomic import write_sorted_json_atomically, write_text_atomically
from neuron_explorer.engine.measure.jsonl import read_jsonl
from neuron_explorer.engine.model.generation import generate_continuations
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import MAX_PROMPT_TOKENS, NEW_TOKENS


@dataclass
class Candidates:
    prompt: str
    greedy: str
    greedy_score: float
    samples: list[str] = field(default_factory=list)
    sample_scores: list[float] = field(default_factory=list)
    steered: list[str] = field(default_factory=list)
    steered_scores: list[float] = field(default_factory=list)


def generate_candidates(
    loaded,
    prompts: list[str],
    scorer,
    *,
    n_samples: int = 4,
    temperature: float = 1.0,
    top_k: int = 50,
    seed: int = 0,
    batch_size: int = 32,
    new_tokens: int = NEW_TOKENS,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    progress=None,
) -> list[Candidates]:
    """Greedy continuation and `n_samples` sampled continuations of each prompt, all scored (continuation only)."""
    if not prompts:
        raise UserError("no prompts to make candidates from: give a non-empty prompt set")
    greedy = generate_continuations(
        loaded, prompts, new_tokens=new_tokens, max_prompt_tokens=max_prompt_tokens, batch_size=batch_size
    )
    if progress:
        progress("greedy", len(prompts))
    samples = _sample(
        loaded,
        prompts,
        n_samples,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        batch_size=batch_size,
        new_tokens=new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        progress=progress,
        label="sampled",
    )
    greedy_scores = scorer.score(greedy)
    out = []
    for i, prompt in enumerate(prompts):
        texts = samples[i]
        out.append(
            Candidates(
                prompt=prompt,
                greedy=greedy[i],
                greedy_score=float(greedy_scores[i]),
                samples=texts,
                sample_scores=[float(s) for s in scorer.score(texts)] if texts else [],
            )
        )
    return out


def _sample(
    loaded, prompts, n, *, temperature, top_k, seed, batch_size, new_tokens, max_prompt_tokens, progress, label
) -> list[list[str]]:
    per_prompt: list[list[str]] = [[] for _ in prompts]
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    for k in range(n):
        texts = generate_continuations(
            loaded,
            prompts,
            new_tokens=new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            batch_size=batch_size,
            sample=True,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
        )
        for i, text in enumerate(texts):
            per_prompt[i].append(text)
        if progress:
            progress(f"{label} {k + 1}/{n}", len(prompts))
    return per_prompt


@contextmanager
def steering(loaded, direction: np.ndarray, strength: float, steer_layers: int = 1) -> Iterator[float]:
    """Add `strength * mean‖h‖ * ŵ` to the output of the last `steer_layers` blocks (all positions).

    mean‖h‖ is the mean residual norm at the last block over a short neutral text, so `strength` is relative.
    Yields the absolute step size."""
    layers = loaded.arch.layers(loaded.model)
    unit = torch.as_tensor(
        direction / np.linalg.norm(direction), dtype=next(loaded.model.parameters()).dtype, device=loaded.device
    )
    scale = strength * _residual_norm(loaded)
    vector = unit * scale

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector,) + tuple(output[1:])
        return output + vector

    with forward_hooks([(layer, hook) for layer in layers[len(layers) - steer_layers :]]):
        yield scale


@torch.inference_mode()
def _residual_norm(loaded) -> float:
    captured = {}

    def hook(module, inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    text = "The committee met on Tuesday to discuss the budget for the coming year and the new library."
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"].to(loaded.device)
    with forward_hooks([(loaded.arch.layers(loaded.model)[-1], hook)]):
        loaded.model(input_ids=ids)
    return float(captured["h"][0, 1:].float().norm(dim=-1).mean())


def add_steered(
    loaded,
    candidates: list[Candidates],
    scorer,
    direction: np.ndarray,
    *,
    n_samples: int = 2,
    strength: float = 0.5,
    steer_layers: int = 1,
    temperature: float = 1.0,
    top_k: int = 50,
    seed: int = 1,
    batch_size: int = 32,
    new_tokens: int = NEW_TOKENS,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    progress=None,
) -> None:
    """Sample `n_samples` continuations per prompt under probe steering and store them (scored) in place."""
    prompts = [c.prompt for c in candidates]
    with steering(loaded, direction, strength, steer_layers):
        steered = _sample(
            loaded,
            prompts,
            n_samples,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            batch_size=batch_size,
            new_tokens=new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            progress=progress,
            label="steered",
        )
    for cand, texts in zip(candidates, steered):
        cand.steered = texts
        cand.steered_scores = [float(s) for s in scorer.score(texts)] if texts else []


CHOSEN_RULES = ("greedy", "least-toxic")
GREEDY_PREFERENCE = 0.1  # least-toxic keeps the greedy continuation unless a sample scores this much lower


def select_pairs(
    candidates: list[Candidates], *, margin: float = 0.3, sources=("samples", "steered"), chosen: str = "greedy"
) -> list[dict]:
    """Rejected = the highest-scoring candidate from `sources`; chosen by the `chosen` rule (see the module
    docstring); keep when the gap ≥ margin."""
    if chosen not in CHOSEN_RULES:
        raise UserError(f"unknown chosen rule '{chosen}': use {' or '.join(CHOSEN_RULES)}")
    pairs = []
    for index, cand in enumerate(candidates):
        pool = []
        if "samples" in sources:
            pool += [(s, t, "best-of-n") for t, s in zip(cand.samples, cand.sample_scores)]
        if "steered" in sources:
            pool += [(s, t, "steer") for t, s in zip(cand.steered, cand.steered_scores)]
        if not pool:
            continue
        score, text, method = max(pool, key=lambda item: item[0])
        good_score, good = cand.greedy_score, cand.greedy
        if chosen == "least-toxic":
            low_score, low = min(zip(cand.sample_scores, cand.samples), default=(good_score, good))
            if low_score < good_score - GREEDY_PREFERENCE:
                good_score, good = low_score, low
        if score - good_score >= margin and text.strip() != good.strip():
            pairs.append(
                {
                    "prompt": cand.prompt,
                    "chosen": good,
                    "rejected": text,
                    "chosen_score": round(good_score, 6),
                    "rejected_score": round(score, 6),
                    "chosen_is_greedy": good is cand.greedy,
                    "rejected_method": method,
                    "prompt_index": index,
                }
            )
    return pairs


def sample_openings(
    loaded,
    seeds: list[str],
    *,
    per_seed: int = 2,
    temperature: float = 1.3,
    top_k: int = 100,
    new_tokens: int = 12,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Each seed continued `per_seed` times at a high temperature, cut back to the last whole word: new prompts
    in the model's own words. Duplicates and openings equal to their seed are dropped."""
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    openings, seen = [], set()
    for _ in range(per_seed):
        texts = generate_continuations(
            loaded,
            seeds,
            new_tokens=new_tokens,
            batch_size=batch_size,
            sample=True,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
        )
        for start, text in zip(seeds, texts):
            words = text.replace("\n", " ").split(" ")
            opening = (start + " ".join(words[:-1] if len(words) > 1 else words)).rstrip()
            if opening != start.rstrip() and opening not in seen:
                seen.add(opening)
                openings.append(opening)
    return openings


def save_candidates(candidates: list[Candidates], path: Path, provenance: dict) -> None:
    _write_jsonl(path, [asdict(c) for c in candidates], provenance)


def load_candidates(path: Path) -> list[Candidates]:
    rows = read_jsonl(path, "candidates")
    try:
        return [Candidates(**row) for row in rows]
    except TypeError as error:
        raise UserError(f"{path} is not a candidates file written by neuron-explorer ({error})") from error


def save_pairs(pairs: list[dict], path: Path, provenance: dict) -> None:
    _write_jsonl(path, pairs, provenance)


def load_pairs(path: str | Path) -> list[dict]:
    path = Path(path).expanduser()
    rows = read_jsonl(path, "pairs")
    for number, row in enumerate(rows, start=1):
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row.get(k), str)]
        if missing:
            raise UserError(
                f"{path}, pair {number}: missing {', '.join(missing)}; each line needs prompt, chosen "
                f"and rejected strings"
            )
    if not rows:
        raise UserError(f"{path} holds no pairs: make some with `neuron-explorer make-pairs` (or lower --margin)")
    return rows


def provenance_path(path: Path) -> Path:
    return path.with_name(path.name + ".provenance.json")


def read_provenance(path: Path) -> dict:
    side = provenance_path(Path(path))
    return json.loads(side.read_text()) if side.exists() else {}


def _write_jsonl(path: Path, rows: list[dict], provenance: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_sorted_json_atomically(provenance_path(path), provenance)
