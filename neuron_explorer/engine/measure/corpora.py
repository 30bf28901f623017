"""The neutral corpus used for perplexity and F1 (METHOD §5).

Sources:
- `builtin` (offline default): the reference documentation that ships with every CPython installation in
  `pydoc_data.topics.topics` (the text of the Language Reference and Library Reference sections that `help()`
  shows: about 79 topics, ~465,000 characters of real English technical prose with some code). Topics are joined
  in sorted key order, so the text is identical on every machine with the same Python version; its hash is
  recorded with every result.
- a local file: `.txt` (raw text), `.jsonl` (a `text` field per line), `.parquet`/`.csv` (a `text` column) — for
  example Wikitext-2 raw test exported to a file.
- `hub:wikitext` (the papers' Wikitext-2 raw test split) or `hub:NAME[:CONFIG[:SPLIT]]` when the hub is reachable.

Perplexity is true perplexity exp(mean token NLL) over non-overlapping fixed-size windows of the tokenized corpus
(default 256 tokens for the embedded model; the papers use 1,024), each starting with the tokenizer's BOS if it adds
one. F1 items are passages of the corpus: a 32-token
prompt and its 20-token gold continuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from neuron_explorer.cache.provenance import sha256_texts
from neuron_explorer.engine.measure.jsonl import read_jsonl, read_utf8
from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import MAX_PROMPT_TOKENS, NEW_TOKENS

BUILTIN = "builtin"


@dataclass(frozen=True)
class Corpus:
    text: str
    source: str
    sha256: str

    def provenance(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "n_chars": len(self.text)}


def load_corpus(source: str = BUILTIN) -> Corpus:
    if source in {BUILTIN, "pydoc", "builtin:pydoc"}:
        text = _pydoc_text()
        source = "builtin:pydoc_data.topics"
    elif source.startswith("hub:"):
        text = _hub_text(source[4:])
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"corpus file {path} does not exist: pass a .txt/.jsonl/.csv/.parquet file or 'builtin'")
        text = _file_text(path)
    if len(text.split()) < 100:
        raise UserError(f"corpus {source} holds fewer than 100 words: give a larger neutral text")
    return Corpus(text=text, source=source, sha256=sha256_texts([text]))


def _pydoc_text() -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions strip it
        raise UserError(
            "this Python has no pydoc_data (its documentation topics were stripped): pass --corpus "
            "FILE with neutral prose, e.g. Wikitext-2 raw test as .txt"
        ) from error
    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def _file_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        rows = read_jsonl(path, "corpus")
        if not all(isinstance(row.get("text"), str) for row in rows):
            raise UserError(f"{path}: every line needs a 'text' string field")
        return "\n".join(row["text"] for row in rows)
    if suffix in {".csv", ".parquet"}:
        import polars as pl

        try:
            frame = pl.read_csv(path) if suffix == ".csv" else pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as error:
            raise UserError(
                f"{path} is not a readable {suffix[1:].upper()} file: {str(error).splitlines()[0]}"
            ) from None
        if "text" not in frame.columns:
            raise UserError(f"{path} has no 'text' column (columns: {', '.join(frame.columns)})")
        return "\n".join(str(v) for v in frame["text"].drop_nulls().to_list())
    return read_utf8(path)


def _hub_text(spec: str) -> str:
    name, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    if name == "wikitext":
        name, config, split = "Salesforce/wikitext", config or "wikitext-2-raw-v1", split or "test"
    try:
        import datasets

        data = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as error:  # offline, or a bad name
        raise UserError(
            f"cannot load hub corpus '{spec}' ({type(error).__name__}): the hub may be unreachable; "
            f"save it as a .txt file and pass that, or use --corpus builtin"
        ) from error
    if "text" not in data.column_names:
        raise UserError(f"hub corpus {name} has no 'text' column")
    return "".join(data["text"]) if name.endswith("wikitext") else "\n".join(data["text"])


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (a BOS for Llama-3 or Gemma, nothing for GPT-2),
    found by encoding one word with and without them."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def perplexity_windows(tokenizer, corpus: Corpus, window: int = 256, max_windows: int | None = 32) -> list[list[int]]:
    """Non-overlapping slices of the tokenized corpus, `window` tokens each with the BOS the tokenizer starts a text
    with (a model trained always to see one reads a window without it as out of distribution: Gemma's perplexity
    inflates), evenly spread over it when capped."""
    if window < 2:
        raise UserError("--ppl-window must be at least 2 tokens")
    ids = tokenizer(corpus.text, add_special_tokens=False)["input_ids"]
    start, _ = special_tokens_around(tokenizer)
    step = window - len(start)
    windows = [start + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]
    if not windows:
        raise UserError(f"the corpus has {len(ids)} tokens, fewer than one {window}-token window")
    return _spread(windows, max_windows)


def f1_items(
    tokenizer,
    corpus: Corpus,
    n: int | None = 100,
    prompt_tokens: int = MAX_PROMPT_TOKENS,
    gold_tokens: int = NEW_TOKENS,
) -> list[tuple[str, str]]:
    """(prompt, gold continuation) pairs: prose paragraphs (each starts a sentence) with at
    least prompt_tokens + gold_tokens tokens; evenly spread over the corpus when capped."""
    items = []
    for paragraph in re.split(r"\n\s*\n", corpus.text):
        lines = paragraph.strip().splitlines()
        # Prose only: skip code blocks and tables (indented by more than the paragraph, or symbol-heavy).
        if not lines or any(line.startswith(("    ", ">>>", "+", "=", "|")) for line in lines):
            continue
        prose = " ".join(line.strip() for line in lines)
        if len(prose.split()) < 30:
            continue
        ids = tokenizer(prose, add_special_tokens=False)["input_ids"]
        if len(ids) < prompt_tokens + gold_tokens:
            continue
        prompt = tokenizer.decode(ids[:prompt_tokens])
        gold = tokenizer.decode(ids[prompt_tokens : prompt_tokens + gold_tokens])
        items.append((prompt, gold))
    if not items:
        raise UserError("the corpus has no prose passage long enough for F1 (32 + 20 tokens)")
    return _spread(items, n)


def _spread(items: list, n: int | None) -> list:
    if n is None or n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


_WORD = re.compile(r"\w+|[^\w\s]")


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 (SQuAD-style: lower-cased word tokens, multiset overlap)."""
    pred = _WORD.findall(prediction.lower())
    ref = _WORD.findall(gold.lower())
    if not pred or not ref:
        return float(pred == ref)
    from collections import Counter

    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
