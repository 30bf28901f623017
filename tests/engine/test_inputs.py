"""Prompt sets in every accepted format, and the clear errors for malformed prompt and probe files (the accepted
checkpoint and probe layouts: test_checkpoints.py)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from neuron_explorer.engine.measure.probe import load_probe
from neuron_explorer.engine.measure.prompts import load_prompts
from neuron_explorer.errors import UserError

TEXTS = ["You are such a", "What the hell is", "She said that"]


@pytest.mark.parametrize("fmt", ["rtp", "prompt", "text", "txt", "csv", "parquet"])
def test_prompt_formats(tmp_path, fmt):
    path = (
        tmp_path
        / {
            "rtp": "p.jsonl",
            "prompt": "p.jsonl",
            "text": "p.jsonl",
            "txt": "p.txt",
            "csv": "p.csv",
            "parquet": "p.parquet",
        }[fmt]
    )
    if fmt == "rtp":
        path.write_text("\n".join(json.dumps({"prompt": {"text": t}, "challenging": True}) for t in TEXTS))
    elif fmt in ("prompt", "text"):
        path.write_text("\n".join(json.dumps({fmt: t}) for t in TEXTS) + "\n\n")
    elif fmt == "txt":
        path.write_text("\n".join(TEXTS) + "\n")
    elif fmt == "csv":
        pl.DataFrame({"id": [1, 2, 3], "prompt": TEXTS}).write_csv(path)
    else:
        pl.DataFrame({"sentence": TEXTS}).write_parquet(path)
    column = "sentence" if fmt == "parquet" else None
    prompts = load_prompts(str(path), column=column)
    assert prompts.texts == TEXTS
    assert prompts.sha256 == load_prompts(str(path), column=column).sha256
    assert load_prompts(str(path), column=column, max_prompts=2).texts == TEXTS[:2]


def test_builtin_prompt_set_has_disjoint_splits():
    pairs, heldout = load_prompts("builtin:pairs").texts, load_prompts("builtin:heldout").texts
    assert len(heldout) >= 50 and len(pairs) + len(heldout) >= 400
    assert not set(pairs) & set(heldout)
    with pytest.raises(UserError, match="unknown built-in split"):
        load_prompts("builtin:test")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": {"text": "ok"}}\n{"prompt": 3}\n', "record 2: no text found"),
        ('{"prompt": {"text": "ok"}}\nnot json\n', "line 2: not valid JSON"),
        ("", "holds no prompts"),
    ],
)
def test_malformed_prompt_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(str(path))


def test_csv_without_the_column_names_the_columns(tmp_path):
    path = tmp_path / "p.csv"
    pl.DataFrame({"sentence": TEXTS}).write_csv(path)
    with pytest.raises(UserError, match="no column 'prompt or text'.*sentence"):
        load_prompts(str(path))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: torch.save(torch.randn(48), p), "width 48.*width 32"),
        (lambda p: torch.save(torch.randn(3, 32), p), r"shape \(3, 32\)"),
        (lambda p: torch.save(torch.zeros(32), p), "zero or not finite"),
        (lambda p: torch.save({"a": torch.randn(32), "b": torch.randn(32)}, p), "none named 'weight'"),
        (lambda p: p.write_bytes(b"not a pickle"), "not a readable probe file"),
    ],
)
def test_bad_probes(tmp_path, make, message):
    path = tmp_path / "probe.pt"
    make(path)
    with pytest.raises(UserError, match=message):
        load_probe(path, 32)
