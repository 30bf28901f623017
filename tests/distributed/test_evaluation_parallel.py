"""`torchrun -m neuron_explorer evaluate` and `patch` in 2 processes give the metrics of one process, and store one
record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from .conftest import run_command

pytestmark = pytest.mark.slow

# 6 prompts in batches of 2 (3 batches: the ranks get 2 and 1), 3 perplexity windows in batches of 4 of their own
# (rank 1 gets none), 5 F1 passages in batches of 2.
EVALUATION = ["--max-prompts", "6", "--batch-size", "2", "--ppl-window", "32", "--ppl-windows", "3", "--f1-items", "5"]


def test_two_processes_evaluate_as_one(workspace, tmp_path):
    model = str(workspace["llama_tuned"])
    args = ["evaluate", f"tuned={model}", "--prompts", str(workspace["prompts"]), "--device", "cpu", *EVALUATION]
    single = run_command([*args, "--json", str(tmp_path / "one.json")])
    assert single.returncode == 0, single.stderr
    parallel = run_command([*args, "--json", str(tmp_path / "two.json")], processes=2)
    assert parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count("evaluating tuned") == 1  # rank 0 alone prints
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    a, b = one["results"]["tuned"], two["results"]["tuned"]
    assert a["n_prompts"] == b["n_prompts"] == 6 and a["n_f1"] == b["n_f1"] == 5 and a["n_tokens"] == b["n_tokens"]
    for key in ("prompts", "generations", "scores", "check_scores", "f1_generations"):
        assert b[key] == a[key], key
    for key in ("toxicity", "toxicity_sem", "f1", "check_toxicity", "perplexity"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=0), key
    assert two["distributed"]["world_size"] == 2 and one["distributed"]["world_size"] == 1


def test_two_processes_patch_as_one_and_store_one_run(workspace, tiny_cache, tmp_path):
    caches = {}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        caches[name] = tmp_path / name / "tiny.h5"
        shutil.copyfile(tiny_cache, caches[name])
    args = [
        "--set",
        "group:TP↓",
        "--set",
        "top:4:|contribution|",
        "--device",
        "cpu",
        "--samples",
        "3",
        "--new-tokens",
        "4",
        *(a for a in EVALUATION if a != "--max-prompts" and a != "6"),
    ]
    for name, processes in (("one", 1), ("two", 2)):
        result = run_command(
            ["patch", str(caches[name]), *args, "--json", str(tmp_path / f"{name}.json")], processes=processes
        )
        assert result.returncode == 0, result.stderr
    one = json.loads((tmp_path / "one.json").read_text())["runs"][0]
    two = json.loads((tmp_path / "two.json").read_text())["runs"][0]
    assert two["samples"] == one["samples"]
    assert two["metrics"]["neurons"] == one["metrics"]["neurons"] > 4
    for key, value in one["metrics"].items():
        if key != "seconds" and isinstance(value, float) and np.isfinite(value):
            assert two["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert two["settings"]["distributed"]["world_size"] == 2 and one["settings"]["distributed"]["world_size"] == 1
    runs = sorted((caches["two"].parent / "tiny.h5.annotations" / "runs").iterdir())
    assert len(runs) == 1  # one record, written by rank 0
    baselines = list((caches["two"].parent / "tiny.h5.annotations").glob("baseline*"))
    assert len(baselines) == 1, baselines
