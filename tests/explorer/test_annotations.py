"""The sidecar folder: neuron sets written atomically, runs read, a missing folder tolerated."""

from __future__ import annotations

import json

import pytest

from neuron_explorer.cache import annotations
from neuron_explorer.errors import UserError


def test_missing_sidecar_reads_as_empty(tmp_path):
    cache = tmp_path / "none.h5"
    assert annotations.list_sets(cache) == [] and annotations.list_runs(cache) == []


def test_save_list_load_delete_a_set(tmp_path):
    cache = tmp_path / "c.h5"
    saved = annotations.save_set(cache, "TP↓-top", [(3, 4), (1, 2), (3, 4)], "group TP↓")
    assert saved.neurons == [(1, 2), (3, 4)]
    path = tmp_path / "c.h5.annotations" / "sets" / "TP↓-top.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["neurons"] == [[1, 2], [3, 4]] and data["description"] == "group TP↓"
    assert [s.name for s in annotations.list_sets(cache)] == ["TP↓-top"]
    assert annotations.load_set(cache, "TP↓-top").neurons == [(1, 2), (3, 4)]
    assert not list(path.parent.glob("*.tmp"))
    annotations.delete_set(cache, "TP↓-top")
    with pytest.raises(UserError):
        annotations.load_set(cache, "TP↓-top")


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 65])
def test_set_names_that_are_not_file_names_are_refused(tmp_path, name):
    with pytest.raises(UserError):
        annotations.save_set(tmp_path / "c.h5", name, [(0, 0)])


def test_runs_are_read_and_broken_files_skipped(tmp_path):
    cache = tmp_path / "c.h5"
    runs = tmp_path / "c.h5.annotations" / "runs"
    runs.mkdir(parents=True)
    (runs / "r1.json").write_text(
        json.dumps(
            {
                "created": "2026-01-02",
                "settings": {"set": "tp"},
                "metrics": {"toxicity": 0.2},
                "samples": [{"prompt": "p", "base": "b", "patched": "x", "dpo": "d"}],
            }
        )
    )
    (runs / "broken.json").write_text("{not json")
    [run] = annotations.list_runs(cache)
    assert run.run_id == "r1" and run.metrics == {"toxicity": 0.2} and run.samples[0]["patched"] == "x"
    assert annotations.load_run(cache, "r1").settings == {"set": "tp"}
