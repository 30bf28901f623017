"""Patch runs on a tiny real cache: neuron sets, the stored records, the baseline reuse, failures, the command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from neuron_explorer.cache import annotations
from neuron_explorer.cache.provenance import sha256_file
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.engine import patching
from neuron_explorer.engine.neuron_sets import normalize_group, resolve
from neuron_explorer.engine.patching import PatchSession, PatchSpec, RunSettings, recovered_metrics
from neuron_explorer.errors import UserError

SMALL = RunSettings(max_prompts=4, ppl_window=32, ppl_windows=2, f1_items=3, new_tokens=4, batch_size=2, samples=3)
SMALL_ARGS = ["--max-prompts", "4", "--ppl-window", "32", "--ppl-windows", "2", "--f1-items", "3",
              "--new-tokens", "4", "--batch-size", "2", "--samples", "2"]


def test_neuron_sets_resolve_every_kind_and_their_union(cache_copy):
    annotations.save_set(cache_copy, "mine", [(0, 1), (2, 5)])
    (cache_copy.parent / "pairs.json").write_text(json.dumps([[1, 2], [1, 3]]))
    with CacheReader(cache_copy) as reader:
        frame = reader.neurons()
        tp = resolve(reader, ["group:TP↓"])
        assert len(tp) == (frame["group"] == "TP↓").sum()
        assert len(resolve(reader, ["group:TP-down"])) == len(tp)
        four = resolve(reader, ["group:reducing"])
        assert len(four) == frame["group"].is_in(["TP↓", "TN↓", "AP↓", "AN↓"]).sum()
        top = resolve(reader, ["top:10:cos_pre"])
        assert set(map(tuple, top.neurons.tolist())) == set(
            frame.sort("cos_pre", descending=True).head(10).select("layer", "neuron").iter_rows())
        assert resolve(reader, ["toxic:10"]).neurons.tolist() == top.neurons.tolist()
        active = resolve(reader, ["toxic-active:5"])
        assert all(reader.neuron(layer, i)["act_pre"] > 0 for layer, i in active.neurons.tolist())
        assert len(resolve(reader, ["top:7:|contribution|"])) == 7
        cluster = int(reader.clusters()["cluster"][0])
        assert len(resolve(reader, [f"cluster:{cluster}"])) == int(reader.clusters()["size"][0])
        union = resolve(reader, ["ids:L0/N1,L2/N5", "set:mine", "file:" + str(cache_copy.parent / "pairs.json")])
        assert union.neurons.tolist() == [[0, 1], [1, 2], [1, 3], [2, 5]]
        assert union.by_layer()[1].tolist() == [2, 3] and union.compact() == {"0": [1], "1": [2, 3], "2": [5]}
        assert len(resolve(reader, ["layer:1"])) == 64 and len(resolve(reader, ["all"])) == 192
        for bad, message in [("group:XX", "no group"), ("cluster:999", "no cluster"), ("top:x:cos_pre", "whole"),
                             ("top:5:nope", "no neuron column"), ("ids:L9/N1", "does not exist"),
                             ("set:absent", "no neuron set"), ("what:1", "not a neuron set"),
                             ("file:/nonexistent.json", "does not exist")]:
            with pytest.raises(UserError, match=message):
                resolve(reader, [bad])
    assert normalize_group("an-up") == ["AN↑"]


def test_a_run_stores_settings_metrics_and_samples_and_reuses_the_baseline(cache_copy, monkeypatch):
    events = []
    before = sha256_file(cache_copy)
    with PatchSession(cache_copy, SMALL, progress=events.append) as session:
        session.plan(1)
        assert session.tracker.total == 3 * session.units  # base, DPO and the run
        run = session.run(PatchSpec("patch-mean", ("group:TP↓",)))
    assert sha256_file(cache_copy) == before  # the statistics file is only read
    stored = annotations.load_run(cache_copy, run.run_id)
    assert stored.metrics["neurons"] == run.metrics["neurons"] > 0
    for key in ("toxicity", "perplexity", "f1", "probe_projection", "probe_change", "recovered", "base_toxicity",
                "dpo_toxicity", "n_prompts", "n_tokens", "n_f1"):
        assert key in stored.metrics
    assert stored.metrics["n_prompts"] == 4 and stored.metrics["n_f1"] == 3
    assert stored.settings["mode"] == "patch-mean" and stored.settings["sets"] == ["group:TP↓"]
    assert sum(stored.settings["layers"].values()) == run.metrics["neurons"]
    assert len(stored.samples) == 3 and set(stored.samples[0]) >= {"prompt", "base", "patched", "dpo"}
    expected = recovered_metrics(*(session.baseline[k] for k in ("base", "dpo")), run.metrics)["recovered"]
    assert run.metrics["recovered"] == pytest.approx(expected, nan_ok=True)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 3 * session.units
    # a second session with the same settings reuses base and DPO: it never loads the tuned model
    import neuron_explorer.engine.models as models

    real_load = models.load_model
    loads = []
    monkeypatch.setattr(models, "load_model", lambda spec, **kw: loads.append(spec) or real_load(spec, **kw))
    with PatchSession(cache_copy, SMALL) as again:
        again.plan(1)
        assert again.baseline is not None and again.tracker.total == again.units
        second = again.run(PatchSpec("zero-ablate", ("toxic:8",)))
    assert loads == [again.base_spec]
    assert second.metrics["base_toxicity"] == run.metrics["base_toxicity"]
    assert [r.run_id for r in annotations.list_runs(cache_copy)] == sorted([run.run_id, second.run_id])


def test_patching_every_neuron_to_the_dpo_mean_and_the_other_modes_run(cache_copy):
    with PatchSession(cache_copy, SMALL) as session:
        for spec in [PatchSpec("shift", ("all",)), PatchSpec("scale", ("layer:2",), factor=0.0),
                     PatchSpec("constant", ("ids:L0/N3",), value=1.0), PatchSpec("mean-ablate", ("group:AN↓",)),
                     PatchSpec("tuning-free", (), alpha=0.05, beta=0.5),
                     PatchSpec("subtract", (), positions="newest"),
                     PatchSpec("patch-mean", ("all",), positions="newest"),
                     PatchSpec("patch-live", ("group:TP↓",))]:
            run = session.run(spec, save=False)
            assert np.isfinite(run.metrics["toxicity"]) and np.isfinite(run.metrics["perplexity"]), spec
        tuning = session.run(PatchSpec("tuning-free", (), beta=0.5), save=False)
        assert tuning.settings["alpha"] == 0.05 and sum(tuning.settings["class_counts"].values()) == \
            tuning.metrics["neurons"]
        subtract = session.run(PatchSpec("subtract", ()), save=False)
        base, dpo = session.baseline["base"], session.baseline["dpo"]
        assert subtract.settings["alpha"] == pytest.approx(base["probe_projection"] - dpo["probe_projection"])
    assert annotations.list_runs(cache_copy) == []  # save=False stores nothing


def test_a_failed_or_killed_run_leaves_no_record_and_an_intact_file(cache_copy, monkeypatch):
    before = sha256_file(cache_copy)
    with PatchSession(cache_copy, SMALL) as session:
        session.ensure_baseline()
        real_measure = session.measure

        def dies(loaded, stage):
            if stage != "base" and stage != "dpo":
                raise KeyboardInterrupt  # what Ctrl-C or a terminated job looks like mid-evaluation
            return real_measure(loaded, stage)

        monkeypatch.setattr(session, "measure", dies)
        with pytest.raises(KeyboardInterrupt):
            session.run(PatchSpec("patch-mean", ("group:TP↓",)))
        from neuron_explorer.engine.interventions import hook_count

        assert hook_count(session.loaded) == 0
        with pytest.raises(UserError, match="needs a neuron set"):
            session.run(PatchSpec("zero-ablate", ()))
    runs_dir = annotations.sidecar_dir(cache_copy) / "runs"
    assert not runs_dir.exists() or not list(runs_dir.iterdir())
    assert sha256_file(cache_copy) == before


def test_runs_are_append_only_and_never_overwrite_each_other(tmp_path, monkeypatch):
    cache = tmp_path / "x.h5"
    monkeypatch.setattr(annotations, "new_run_id", lambda label="run": "same-id")
    first = annotations.save_run(cache, {"mode": "a"}, {"toxicity": 0.1}, [], label="a")
    assert first.run_id == "same-id"
    with pytest.raises(RuntimeError, match="free run id"):
        annotations.save_run(cache, {"mode": "b"}, {"toxicity": 0.2}, [], label="b")
    assert annotations.load_run(cache, "same-id").settings == {"mode": "a"}
    monkeypatch.undo()
    ids = {annotations.save_run(cache, {}, {"toxicity": float(i)}, []).run_id for i in range(5)}
    assert len(ids) == 5
    names = os.listdir(annotations.sidecar_dir(cache) / "runs")
    assert not [n for n in names if n.endswith(".tmp")] and len(names) == 6


def test_patch_command_single_run_and_preset(cache_copy, capsys):
    code = main(["patch", str(cache_copy), "--set", "group:TP↓", "--set", "toxic:4", "--mode", "patch-mean",
                 *SMALL_ARGS])
    out = capsys.readouterr().out
    assert code == 0 and "| base |" in out and "| DPO |" in out and "patch-mean group:TP↓ ∪ toxic:4" in out
    assert main(["patch", str(cache_copy), "--preset", "paper", *SMALL_ARGS, "--progress-json", "--max-prompts", "2",
                 "--ppl-windows", "1", "--f1-items", "1", "--new-tokens", "2"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [e for e in events if e["event"] == "run"]
    assert [e["label"] for e in runs] == ["ablate top-128 toxic", "patch TP↓", "patch TN↓", "patch AP↓", "patch AN↓",
                                          "patch all four ↓ groups", "tuning-free edit (α=0.05, β=0.5)"]
    assert events[-1]["event"] == "done" and "| patch all four ↓ groups |" in events[-1]["table"]
    assert len(annotations.list_runs(cache_copy)) == 8


@pytest.mark.parametrize("argv,message", [
    (["--mode", "zero-ablate"], "say which neurons"),
    (["--set", "group:ZZ"], "no group"),
    (["--preset", "paper", "--set", "all"], "chooses its own"),
    (["--preset", "paper", "--mode", "scale"], "chooses its own"),
    (["--set", "all", "--max-prompts", "-1"], "0 or more"),
])
def test_patch_command_errors_are_one_line(cache_copy, capsys, argv, message):
    assert main(["patch", str(cache_copy), *SMALL_ARGS, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert annotations.list_runs(cache_copy) == []


def test_patch_command_progress_json_reports_errors(cache_copy, capsys, tmp_path):
    assert main(["patch", str(tmp_path / "missing.h5"), "--set", "all", "--progress-json"]) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "error" and "no such file" in events[-1]["message"]


def test_preset_lists_the_papers_rows():
    specs = patching.paper_preset()
    assert [s.mode for s in specs] == ["zero-ablate"] + ["patch-mean"] * 5 + ["tuning-free"]
    assert specs[0].sets == ("toxic:128",) and specs[5].sets == ("group:reducing",)
    assert [s.positions for s in specs] == ["all"] + ["newest"] * 6  # the authors' protocol
    assert {s.positions for s in patching.paper_preset("all")} == {"all"}
