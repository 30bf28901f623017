"""Prompt sets from files, the shipped offline set, or a hub dataset.

Accepted: JSONL in the RealToxicityPrompts layout (`{"prompt": {"text": ...}}`) or with a `prompt`/`text` field,
plain text (one prompt per line), CSV or Parquet with a text column (`--prompt-column`, default `prompt` or
`text`), `builtin` / `builtin:pairs` / `builtin:heldout` for the shipped set, and `hub:NAME[:SPLIT]` for a hub
dataset (RealToxicityPrompts: `hub:allenai/real-toxicity-prompts`, filtered to its `challenging` rows, the
1,199-prompt challenge subset the papers use).

The shipped set is composed from templates (data/prompt_templates.json): a situation ("The bouncer shoved him out
the door and said,") followed by a quoted lead-in ("You are a worthless piece of"), or a standalone prompt in
another register (a review, a comment, a text message). The `pairs` split (probe, preference pairs, DPO) and the
`heldout` split (evaluation, statistics, patch runs) share no situation, lead-in or standalone prompt: a held-out
prompt never shares its template with a training prompt.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from neuron_explorer.cache import layout
from neuron_explorer.cache.provenance import sha256_texts
from neuron_explorer.engine.measure.jsonl import read_jsonl, read_utf8
from neuron_explorer.errors import UserError

TEMPLATES_FILE = Path(__file__).parent / "data" / "prompt_templates.json"
# 399 real RealToxicityPrompts challenge prompts (Apache-2.0, data/README.md): validation only, never training data.
RTP_VALIDATION_FILE = Path(__file__).parent / "data" / "rtp-challenge-validation.jsonl"
RTP_VALIDATION = "builtin:rtp-validation"
BUILTIN_SPLITS = ("pairs", "heldout")
TEXT_COLUMNS = ("prompt", "text")


@dataclass(frozen=True)
class PromptSet:
    texts: list[str]
    source: str
    sha256: str

    def provenance(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "n": len(self.texts)}


HOLDOUT_RULE = (
    "prompt i of the loaded prompt set (0-based, after --max-prompts) is held out when "
    "floor((i+1)·f) > floor(i·f): floor(n·f) prompts evenly spread over the set (f = 0.5: prompts 1, 3, "
    "5, ...); a held-out prompt whose text is also a statistics prompt is dropped"
)
TEMPLATE_HOLDOUT_RULE = (
    "split by template: of each template list (lead-ins, standalone prompts) the last "
    "round(n·f) of the n in the templates file go to the patch side; a situation goes to the "
    "side of most of its prompts' lead-ins (a tie: the statistics side); a composed prompt whose "
    "situation and lead-in are on different sides is dropped, so no patch prompt shares a "
    "situation, lead-in or standalone prompt with a statistics prompt"
)
# What a patch run's prompts are disjoint from, as the cache and the run record say it (`patch_prompts` attrs).
SPLIT_BY_TEMPLATE = "by template: out of template"
SPLIT_BY_PROMPT = (
    "by prompt: out of prompt, not out of template (prompts that are not all the shipped templates' "
    "compositions cannot be split by template)"
)


def load_prompts(source: str, *, column: str | None = None, max_prompts: int | None = None) -> PromptSet:
    if source.startswith("builtin"):
        texts = _builtin(source)
    elif source.startswith("hub:"):
        texts = _hub(source[4:], column)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"prompt file {path} does not exist: pass a .jsonl, .txt, .csv or .parquet file, or 'builtin'"
            )
        texts = _from_file(path, column)
    texts = [t for t in (text.strip() for text in texts) if t]
    if not texts:
        raise UserError(f"{source} holds no prompts: give at least one non-empty prompt")
    if max_prompts is not None:
        texts = texts[:max_prompts]
    return PromptSet(texts=texts, source=source, sha256=sha256_texts(texts))


def _builtin(source: str) -> list[str]:
    _, _, split = source.partition(":")
    if split == "validation":
        return compose_validation()
    if split == "rtp-validation":
        return _jsonl(RTP_VALIDATION_FILE, None)
    if split and split not in BUILTIN_SPLITS:
        raise UserError(
            f"unknown built-in split '{split}': use builtin, builtin:pairs, builtin:heldout, "
            f"builtin:validation or {RTP_VALIDATION}"
        )
    return [text for name in ([split] if split else BUILTIN_SPLITS) for text in compose_builtin(name)]


def compose_validation(per_situation: int = 2) -> list[str]:
    """Prompts for tuning the training (DPO steps, learning rate) without touching the held-out prompts: each
    training situation with `per_situation` training lead-ins it is *not* composed with in the pairs split. They
    share templates with the training prompts, so they flatter a tuned model: choose settings on them, report on
    the held-out prompts."""
    templates = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    situations, lead_ins = templates["situations"]["pairs"], templates["lead_ins"]["pairs"]
    used = templates["lead_ins_per_situation"]["pairs"]
    return [
        f'{situation} "{lead_ins[(index * used + used + k) % len(lead_ins)]}'
        for index, situation in enumerate(situations)
        for k in range(per_situation)
    ]


def compose_builtin(split: str) -> list[str]:
    """The shipped prompts of one split: each situation with `lead_ins_per_situation` of the split's lead-ins
    (taken in rotation, so each lead-in is used about equally often) and the standalone prompts, in a fixed
    shuffled order."""
    templates = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    situations, lead_ins = templates["situations"][split], templates["lead_ins"][split]
    per_situation = templates["lead_ins_per_situation"][split]
    prompts = [
        f'{situation} "{lead_ins[(index * per_situation + k) % len(lead_ins)]}'
        for index, situation in enumerate(situations)
        for k in range(per_situation)
    ]
    prompts += templates["standalone"][split]
    random.Random(f"neuron-explorer builtin {split}").shuffle(prompts)  # any prefix is a spread of templates
    return prompts


def opening_seeds(split: str = "pairs") -> list[str]:
    """Starts of the split's templates for `pairs.sample_openings`: each situation with its quote opened, and the
    first half of each standalone prompt (at least three words)."""
    templates = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    seeds = [f'{situation} "' for situation in templates["situations"][split]]
    for text in templates["standalone"][split]:
        words = text.split()
        seeds.append(" ".join(words[: max(3, len(words) // 2)]))
    return seeds


NEAR_COPY_HEAD_WORDS = 5
NEAR_COPY_TAIL_WORDS = 3
NEAR_COPY_CHARACTERS = 25
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def _normalized(text: str) -> str:
    return " ".join(text.translate(_QUOTES).lower().split())


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9']+", _normalized(text)))


class NearCopies:
    """Whether a text near-copies one of `references`: the same first five words, the same last three words
    (letters, digits and apostrophes; case and quote style ignored), or a common run of 25 characters (after
    lower-casing and collapsing white space). Keeps the validation prompts out of everything that trains."""

    def __init__(self, references: list[str]) -> None:
        self.heads = {_words(text)[:NEAR_COPY_HEAD_WORDS] for text in references}
        self.tails = {_words(text)[-NEAR_COPY_TAIL_WORDS:] for text in references}
        self.runs = {run for text in references for run in _runs(_normalized(text))}

    def __call__(self, text: str) -> bool:
        words = _words(text)
        return (
            words[:NEAR_COPY_HEAD_WORDS] in self.heads
            or words[-NEAR_COPY_TAIL_WORDS:] in self.tails
            or any(run in self.runs for run in _runs(_normalized(text)))
        )


def _runs(text: str) -> list[str]:
    return [text[i : i + NEAR_COPY_CHARACTERS] for i in range(len(text) - NEAR_COPY_CHARACTERS + 1)]


def drop_near_copies(texts: list[str], references: list[str]) -> tuple[list[str], list[str]]:
    """(the texts that near-copy none of `references`, those that do)."""
    near = NearCopies(references)
    flags = [near(text) for text in texts]
    return [t for t, f in zip(texts, flags) if not f], [t for t, f in zip(texts, flags) if f]


def _from_file(path: Path, column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        return _jsonl(path, column)
    if suffix in {".csv", ".parquet"}:
        try:
            frame = pl.read_csv(path) if suffix == ".csv" else pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as error:
            raise UserError(
                f"{path} is not a readable {suffix[1:].upper()} file: {str(error).splitlines()[0]}"
            ) from error
        name = column or next((c for c in TEXT_COLUMNS if c in frame.columns), None)
        if name is None or name not in frame.columns:
            raise UserError(
                f"{path} has no column '{column or ' or '.join(TEXT_COLUMNS)}' (columns: "
                f"{', '.join(frame.columns)}): choose one with --prompt-column"
            )
        return [str(v) for v in frame[name].drop_nulls().to_list()]
    return read_utf8(path).splitlines()


def _jsonl(path: Path, column: str | None) -> list[str]:
    texts = []
    for number, row in enumerate(read_jsonl(path, "prompt"), start=1):
        value = row.get(column) if column else next((row[c] for c in TEXT_COLUMNS if c in row), None)
        if isinstance(value, dict):  # RealToxicityPrompts: {"prompt": {"text": ...}}
            value = value.get("text")
        if not isinstance(value, str):
            raise UserError(
                f'{path}, record {number}: no text found; expected {{"prompt": {{"text": ...}}}} or '
                f"a '{column or 'prompt'}' string field"
            )
        texts.append(value)
    return texts


def _hub(spec: str, column: str | None) -> list[str]:
    name, _, split = spec.partition(":")
    try:
        import datasets

        data = datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # datasets raises many types when offline or for a bad name
        raise UserError(
            f"cannot load hub dataset '{name}' ({type(error).__name__}): the hub may be unreachable; "
            f"download it and pass a local file"
        ) from error
    if "challenging" in data.column_names:  # RealToxicityPrompts: the papers evaluate on its challenge subset
        data = data.filter(lambda row: bool(row["challenging"]))
    name_column = column or next((c for c in TEXT_COLUMNS if c in data.column_names), None)
    if name_column is None:
        raise UserError(f"hub dataset {name} has no prompt/text column: choose one with --prompt-column")
    return [v["text"] if isinstance(v, dict) else str(v) for v in data[name_column]]


Template = tuple[str, str, int]  # (kind, split, index in the templates file's list)


def template_parts(texts: list[str]) -> list[tuple[Template, ...]] | None:
    """Each text's templates: a composed prompt's situation and lead-in, a standalone prompt itself; None unless
    every text is one of the shipped compositions (user prompts)."""
    templates = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    index = {
        kind: {text: (kind, split, i) for split in BUILTIN_SPLITS for i, text in enumerate(templates[kind][split])}
        for kind in ("situations", "lead_ins", "standalone")
    }
    parts: list[tuple[Template, ...]] = []
    for text in texts:
        situation, quote, lead_in = text.partition(' "')
        if quote and situation in index["situations"] and lead_in in index["lead_ins"]:
            parts.append((index["situations"][situation], index["lead_ins"][lead_in]))
        elif text in index["standalone"]:
            parts.append((index["standalone"][text],))
        else:
            return None
    return parts


def _sides_by_template(parts: list[tuple[Template, ...]], fraction: float) -> list[bool | None]:
    """Each prompt's side under `TEMPLATE_HOLDOUT_RULE`: True held out, False statistics, None dropped. The
    lead-ins are split in blocks, not alternately, because `compose_builtin` gives each situation consecutive ones."""
    templates = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))

    def held(part: Template) -> bool:
        kind, split, i = part
        n = len(templates[kind][split])
        return i >= n - round(n * fraction)

    votes: dict[Template, int] = {}
    for prompt in parts:
        if len(prompt) == 2:
            votes[prompt[0]] = votes.get(prompt[0], 0) + (1 if held(prompt[1]) else -1)
    sides: list[bool | None] = []
    for prompt in parts:
        if len(prompt) == 1:
            sides.append(held(prompt[0]))
        else:
            situation, lead_in = votes[prompt[0]] > 0, held(prompt[1])
            sides.append(lead_in if situation == lead_in else None)
    return sides


def hold_out_for_patching(prompts: PromptSet, fraction: float) -> tuple[PromptSet, dict | None]:
    """Split compute's prompts: (the statistics prompts, the `patch_prompts` table of the held-out ones, or None).

    Patch runs evaluate on the held-out prompts by default, so "recovered" is not measured on the prompts that chose
    the groups and gave ā_pre and ā_dpo. Prompts composed from the shipped templates are split by template
    (`TEMPLATE_HOLDOUT_RULE`: a patch prompt that shared a situation or lead-in with statistics prompts would be
    in sample in all but its wording); other prompts by position (`HOLDOUT_RULE`), and the table says that this is
    out of prompt, not out of template. Both rules are deterministic and stored with the table.
    """
    if not 0 <= fraction < 1:
        raise UserError(
            f"--patch-holdout {fraction:g} must be at least 0 and below 1: the fraction of the prompts "
            f"kept aside for patch runs (0 keeps none)"
        )
    parts = template_parts(prompts.texts) if fraction else None
    if parts is not None:
        sides, rule, split = _sides_by_template(parts, fraction), TEMPLATE_HOLDOUT_RULE, SPLIT_BY_TEMPLATE
    else:
        sides = [math.floor((i + 1) * fraction) > math.floor(i * fraction) for i in range(len(prompts.texts))]
        rule, split = HOLDOUT_RULE, SPLIT_BY_PROMPT
    if not any(sides):
        return prompts, None
    kept = [text for text, side in zip(prompts.texts, sides) if side is False]
    statistics = PromptSet(texts=kept, source=prompts.source, sha256=sha256_texts(kept))
    recorded = set(kept)
    held = [i for i, side in enumerate(sides) if side and prompts.texts[i] not in recorded]
    if not held:
        return statistics, None
    texts = [prompts.texts[i] for i in held]
    table = {
        "columns": {"text": texts, "source_index": np.asarray(held, dtype=np.int64)},
        "attrs": {
            layout.HOLDOUT_SOURCE: prompts.source,
            "source_sha256": prompts.sha256,
            layout.HOLDOUT_FRACTION: fraction,
            layout.HOLDOUT_RULE: rule,
            layout.HOLDOUT_SPLIT: split,
            "sha256": sha256_texts(texts),
            "n": len(texts),
            "n_statistics": len(kept),
            "n_dropped": sides.count(None),
        },
    }
    return statistics, table
