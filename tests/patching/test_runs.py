"""Patch runs on a tiny real cache: neuron sets, the stored records, the baseline reuse, failures, the command;
each mode's run against the evaluation of a hand-edited copy, and the held-out prompts runs evaluate on."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from neuron_explorer.cache import annotations, schema
from neuron_explorer.cache.provenance import sha256_file, sha256_texts
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.engine.measure.prompts import PromptSet, hold_out_for_patching
from neuron_explorer.engine.patching import interventions as iv
from neuron_explorer.engine.patching import runs as patching
from neuron_explorer.engine.patching.neuron_sets import normalize_group, resolve
from neuron_explorer.engine.patching.runs import PatchSession, format_runs_table, recovered_metrics
from neuron_explorer.errors import UserError
from neuron_explorer.events import Done, Failed, Progress, Stored, from_json
from neuron_explorer.spec.intervention import Intervention, PaperPreset, Positions
from neuron_explorer.spec.settings import EvaluationSettings, RunSettings

from .test_interventions import hand_edited, out_projection

SMALL = RunSettings(
    max_prompts=4,
    samples=3,
    evaluation=EvaluationSettings(ppl_window=32, ppl_windows=2, f1_items=3, new_tokens=4, batch_size=2),
)
SMALL_ARGS = [
    "--max-prompts",
    "4",
    "--ppl-window",
    "32",
    "--ppl-windows",
    "2",
    "--f1-items",
    "3",
    "--new-tokens",
    "4",
    "--batch-size",
    "2",
    "--samples",
    "2",
]


@pytest.fixture
def statistics_prompts(prompts) -> list[str]:
    """The prompts a cache of `compute_cache` keeps for its statistics: the default holdout keeps every second
    prompt aside."""
    return prompts[0::2]


@pytest.fixture
def held_out_prompts(prompts) -> list[str]:
    """The prompts a cache of `compute_cache` holds out for patch runs (every second one)."""
    return prompts[1::2]


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
            frame.sort("cos_pre", descending=True).head(10).select("layer", "neuron").iter_rows()
        )
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
        for bad, message in [
            ("group:XX", "no group"),
            ("cluster:999", "no cluster"),
            ("top:x:cos_pre", "whole"),
            ("top:5:nope", "no neuron column"),
            ("ids:L9/N1", "does not exist"),
            ("set:absent", "no neuron set"),
            ("what:1", "not a neuron set"),
            ("file:/nonexistent.json", "does not exist"),
        ]:
            with pytest.raises(UserError, match=message):
                resolve(reader, [bad])
    assert normalize_group("an-up") == ["AN↑"]


def test_a_run_stores_settings_metrics_and_samples_and_reuses_the_baseline(cache_copy, monkeypatch):
    events = []
    before = sha256_file(cache_copy)
    with PatchSession(cache_copy, SMALL, report=events.append) as session:
        session.plan(1)
        assert session.tracker.total == 3 * session.units  # base, DPO and the run
        run = session.run(Intervention("patch-mean", ("group:TP↓",)))
    assert sha256_file(cache_copy) == before  # the statistics file is only read
    stored = annotations.load_run(cache_copy, run.run_id)
    assert stored.metrics["neurons"] == run.metrics["neurons"] > 0
    assert set(stored.metrics) == set(schema.RUN_METRICS)
    assert stored.metrics["n_prompts"] == 4 and stored.metrics["n_f1"] == 3
    assert stored.settings["mode"] == "patch-mean" and stored.settings["sets"] == ["group:TP↓"]
    assert sum(stored.settings["layers"].values()) == run.metrics["neurons"]
    assert len(stored.samples) == 3 and set(stored.samples[0]) >= {"prompt", "base", "patched", "dpo"}
    assert stored.settings["perplexity"] == iv.ALL_POSITIONS_PASS
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 3 * session.units
    # a second session with the same settings reuses base and DPO: it never loads the tuned model
    import neuron_explorer.engine.model.loading as models

    real_load = models.load_model
    loads = []
    monkeypatch.setattr(models, "load_model", lambda spec, **kw: loads.append(spec) or real_load(spec, **kw))
    with PatchSession(cache_copy, SMALL) as again:
        again.plan(1)
        assert again.baseline is not None and again.tracker.total == again.units
        second = again.run(Intervention("zero-ablate", ("toxic:8",)))
    assert loads == [again.base_spec]
    assert second.metrics["base_toxicity"] == run.metrics["base_toxicity"]
    assert [r.run_id for r in annotations.list_runs(cache_copy)] == sorted([run.run_id, second.run_id])


def test_a_tuned_folder_overwritten_after_a_run_is_measured_anew_with_a_warning(
    cache_copy, pairs, edited_copy, tmp_path
):
    base, tuned = pairs["llama"]
    folder = tmp_path / "tuned"
    shutil.copytree(tuned, folder)  # the same weights the cache was computed on, in a folder this test may overwrite
    settings = replace(
        SMALL, tuned=str(folder), max_prompts=2, evaluation=replace(SMALL.evaluation, f1_items=1, ppl_windows=1)
    )
    events = []
    with PatchSession(cache_copy, settings, report=events.append) as session:
        first = session.ensure_baseline()
    assert not [e for e in events if getattr(e, "level", "") == "warning"]
    edited_copy(base, folder, noise=0.3)  # as `train-dpo` does: new weights under the same name
    events = []
    with PatchSession(cache_copy, settings, report=events.append) as again:
        assert again.baseline is None  # the stored DPO row belongs to the old weights
        second = again.ensure_baseline()
    warnings = [e.text for e in events if getattr(e, "level", "") == "warning"]
    assert len(warnings) == 1 and "tuned model's weights" in warnings[0] and "\n" not in warnings[0]
    assert second["weights"]["tuned"] != first["weights"]["tuned"]
    assert second["dpo"]["generations"] != first["dpo"]["generations"]
    assert second["base"]["generations"] == first["base"]["generations"]


def test_recovered_on_hand_built_numbers():
    base = {"toxicity": 0.40, "probe_projection": 2.0, "perplexity": 17.0}
    dpo = {"toxicity": 0.10, "probe_projection": -1.0, "perplexity": 18.0}
    half = recovered_metrics(base, dpo, {"toxicity": 0.25, "probe_projection": 1.25})
    assert tuple(half) == schema.RECOVERED_METRICS
    assert half["recovered"] == pytest.approx(0.5)  # 0.15 of DPO's 0.30
    assert half["recovered_probe"] == pytest.approx(0.25)  # 0.75 of DPO's 3.0
    assert half["probe_change"] == pytest.approx(-0.75)
    overshoot = recovered_metrics(base, dpo, {"toxicity": 0.0, "probe_projection": -4.0})
    assert overshoot["recovered"] == pytest.approx(4 / 3)
    backwards = recovered_metrics(base, dpo, {"toxicity": 0.5, "probe_projection": 2.0})
    assert backwards["recovered"] == pytest.approx(-1 / 3)
    assert math.isnan(
        recovered_metrics(base, {**dpo, "toxicity": 0.40}, {"toxicity": 0.3, "probe_projection": 0})["recovered"]
    )  # DPO changed nothing: no fraction of it


def cache_arrays(path) -> dict[str, np.ndarray]:
    """(n_layers, d_mlp) neuron columns and groups read from the cache in the test."""
    with CacheReader(path) as reader:
        frame = reader.neurons()
        shape = (reader.info.n_layers, reader.info.d_mlp)
        arrays = {
            name: frame[name].to_numpy().astype(np.float64).reshape(shape) for name in ("act_pre", "act_dpo", "cos_pre")
        }
        arrays["group"] = frame["group"].cast(str).to_numpy().reshape(shape)
        arrays["probe"] = reader.probe_direction().astype(np.float64)
    return arrays


def by_layer(mask: np.ndarray, values) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{layer: (indices, values)} of the neurons in `mask`; `values` an array of the same shape or a scalar."""
    out = {}
    for layer in range(mask.shape[0]):
        indices = np.flatnonzero(mask[layer])
        if len(indices):
            out[layer] = (indices, values[layer, indices] if isinstance(values, np.ndarray) else values)
    return out


def test_each_mode_evaluates_as_a_copy_edited_by_hand(cache_copy):
    """Under every mode, the session's evaluation (generations and their toxicity, perplexity, F1 continuations, probe
    projection) equals the plain evaluation of a copy of the base model whose weights make the same edit, built
    from the cache's arrays read in the test."""
    a = cache_arrays(cache_copy)
    group = a["group"]
    shift = a["act_pre"] - a["act_dpo"]
    reducing = np.isin(group, ["TP↓", "TN↓", "AP↓", "AN↓"])
    toxic8 = np.zeros(group.size, dtype=bool)
    toxic8[np.argsort(-a["cos_pre"].ravel())[:8]] = True
    layer2 = np.zeros(group.shape, dtype=bool)
    layer2[2] = True
    one = np.zeros(group.shape, dtype=bool)
    one[0, 3] = True
    unit = a["probe"] / np.linalg.norm(a["probe"])
    cases = [
        (Intervention("patch-mean", ("group:TP↓",)), dict(clamp=by_layer(group == "TP↓", a["act_dpo"]))),
        (Intervention("mean-ablate", ("group:AN↓",)), dict(clamp=by_layer(group == "AN↓", a["act_pre"]))),
        (Intervention("shift", ("group:reducing",)), dict(shift=by_layer(reducing, -shift))),
        (
            Intervention("shift", ("all",), params={"alpha": 0.5}),
            dict(shift=by_layer(np.ones(group.shape, bool), -0.5 * shift)),
        ),
        (Intervention("scale", ("layer:2",), params={"factor": 0.0}), dict(factor=by_layer(layer2, 0.0))),
        (
            Intervention("constant", ("ids:L0/N3",), params={"value": 4.0}),
            dict(clamp=by_layer(one, np.full(group.shape, 4.0))),
        ),
        (Intervention("zero-ablate", ("toxic:8",)), dict(clamp=by_layer(toxic8.reshape(group.shape), 0.0 * shift))),
        (Intervention("subtract", (), params={"alpha": 1.5}), dict(residual=-1.5 * unit)),
    ]
    with PatchSession(cache_copy, SMALL) as session:
        plain = session.measure(session.loaded, "base")
        for spec, edit in cases:
            measured = session.measure(session.loaded, spec.name(), session.intervention(spec)[0])
            expected = session.measure(hand_edited(session.loaded, **edit), "copy")
            assert measured.generations == expected.generations and measured.scores == expected.scores, spec
            assert measured.f1_generations == expected.f1_generations and measured.f1 == expected.f1, spec
            assert measured.perplexity == pytest.approx(expected.perplexity, rel=1e-4), spec
            assert measured.perplexity != pytest.approx(plain.perplexity, rel=1e-4), spec
            assert measured.probe_projection == pytest.approx(expected.probe_projection, rel=1e-4, abs=1e-5), spec
            assert measured.perplexity_pass == iv.ALL_POSITIONS_PASS


def test_a_newest_position_run_reports_the_perplexity_of_the_patch_at_every_position(cache_copy):
    """Before, its perplexity pass changed only the last position, which perplexity does not score: the run printed
    the base perplexity. Now it equals the perplexity of a copy whose weights clamp the group everywhere, as
    generation through the KV cache does."""
    a = cache_arrays(cache_copy)
    with PatchSession(cache_copy, SMALL) as session:
        base = session.ensure_baseline()["base"]
        run = session.run(Intervention("patch-mean", ("group:TP↓",), positions="newest"), save=False)
        copy = session.measure(hand_edited(session.loaded, clamp=by_layer(a["group"] == "TP↓", a["act_dpo"])), "copy")
    assert run.metrics["perplexity"] == pytest.approx(copy.perplexity, rel=1e-4)
    assert run.metrics["perplexity"] != pytest.approx(base["perplexity"], rel=1e-4)
    assert run.settings["perplexity"] == iv.NEWEST_AS_GENERATED_PASS
    assert annotations.list_runs(cache_copy) == []  # save=False stores nothing


def test_a_mode_without_a_scoring_pass_reports_perplexity_as_not_available(cache_copy, monkeypatch):
    with PatchSession(cache_copy, SMALL) as session:
        monkeypatch.setattr(iv.Intervention, "scoring_pass", lambda self: (None, "n/a: no scoring pass here"))
        run = session.run(Intervention("shift", ("group:TP↓",)), save=False)
        assert math.isnan(run.metrics["perplexity"]) and run.metrics["n_tokens"] == 0
        assert run.settings["perplexity"] == "n/a: no scoring pass here"
        row = format_runs_table(session.baseline, [run]).splitlines()[-1]
    assert row.split("|")[5].strip() == "n/a"


def test_live_patching_of_every_neuron_recovers_dpo_exactly_when_only_the_mlp_inputs_changed(
    tiny_models, edited_copy, compute_cache, tmp_path_factory
):
    """A tuned copy that differs only in the MLP input weights: the base model with every activation taken from it
    is that model, so the run gives DPO's generations and numbers and recovers 100% (a known answer). At the newest
    position only, generation keeps the base model's prompt positions, but perplexity, measured as generation
    patches (every scored position), is DPO's."""

    def new_mlp_inputs(model):
        generator = torch.Generator().manual_seed(11)
        for block in model.model.layers:
            for proj in (block.mlp.gate_proj, block.mlp.up_proj):
                proj.weight.add_(torch.randn(proj.weight.shape, generator=generator) * 0.3)

    root = tmp_path_factory.mktemp("inputs-only")
    tuned = edited_copy(tiny_models["llama"], root / "tuned", edit=new_mlp_inputs)
    path = compute_cache(tiny_models["llama"], tuned, "inputs-only.h5")
    with PatchSession(path, SMALL) as session:
        baseline = session.ensure_baseline()
        everywhere = session.run(Intervention("patch-live", ("all",)), save=False)
        newest = session.run(Intervention("patch-live", ("all",), positions="newest"), save=False)
    base, dpo = baseline["base"], baseline["dpo"]
    assert [s["patched"] for s in everywhere.samples] == [s["dpo"] for s in everywhere.samples]
    assert everywhere.metrics["toxicity"] == dpo["toxicity"] and everywhere.metrics["f1"] == dpo["f1"]
    assert everywhere.metrics["recovered_probe"] == pytest.approx(1.0, abs=1e-4)
    for run in (everywhere, newest):
        assert run.metrics["perplexity"] == pytest.approx(dpo["perplexity"], rel=1e-5)
        assert run.metrics["perplexity"] != pytest.approx(base["perplexity"], rel=1e-4)


def hand_probe_projection(loaded, texts: list[str], unit: np.ndarray, new_tokens: int) -> float:
    """Mean of (last block output · ŵ) at the positions that predict each new token, by uncached greedy passes,
    one prompt at a time (no padding), end-of-sequence suppressed."""
    model, tokenizer = loaded.model, loaded.tokenizer
    last = model.model.layers[-1]
    unit = torch.as_tensor(unit, dtype=torch.float32)
    seen = []
    handle = last.register_forward_hook(
        lambda module, args, out: seen.append((out[0] if isinstance(out, tuple) else out)[0, -1])
    )
    values = []
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, truncation=True, max_length=32)["input_ids"]
                for _ in range(new_tokens):
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                    logits[[tokenizer.eos_token_id, tokenizer.pad_token_id]] = float("-inf")
                    values.append(float(seen[-1] @ unit))
                    ids.append(int(logits.argmax()))
    finally:
        handle.remove()
    return float(np.mean(values))


def test_probe_projection_matches_an_uncached_computation_and_sizes_the_default_subtraction_out_of_sample(
    cache_copy, held_out_prompts, statistics_prompts
):
    with PatchSession(cache_copy, SMALL) as session:
        baseline = session.ensure_baseline()
        unit = session.unit_probe
        texts = held_out_prompts[: SMALL.max_prompts]
        expected = {
            "base": hand_probe_projection(session.loaded, texts, unit, SMALL.evaluation.new_tokens),
            "dpo": hand_probe_projection(session.tuned(), texts, unit, SMALL.evaluation.new_tokens),
        }
        for name in ("base", "dpo"):
            assert baseline[name]["probe_projection"] == pytest.approx(expected[name], rel=1e-4, abs=1e-5)
        # α is DPO's change on the statistics prompts, never on the scored (held-out) prompts
        fit = statistics_prompts[: SMALL.max_prompts]
        fitted = hand_probe_projection(session.loaded, fit, unit, SMALL.evaluation.new_tokens) - hand_probe_projection(
            session.tuned(), fit, unit, SMALL.evaluation.new_tokens
        )
        subtract = session.run(Intervention("subtract", ()), save=False)
    in_sample = expected["base"] - expected["dpo"]
    assert abs(fitted - in_sample) > 1e-3  # the two fits differ, so the check below tells them apart
    assert subtract.settings["alpha"] == pytest.approx(fitted, rel=1e-3, abs=1e-5)
    assert subtract.settings["alpha_fitted_on"] == "4 statistics prompts (out of sample)"
    assert subtract.settings["probe_positions"].startswith("the last prompt token and generated tokens 1 to n-1")
    assert not set(fit) & set(texts)


def test_the_tuning_free_run_clamps_neurons_of_known_classes_by_alpha(cache_copy, held_out_prompts):
    """Sign classes from cos with the toxic embedding (Yang et al.'s seed words), computed here from the value
    vectors, and ā_pre from the cache: the top-|cos| TP and AN neurons go to 0.95 ā_pre, the lowest-|cos| TN and AP
    neurons to 1.05 ā_pre, and
    each class contributes half its members (β = 0.5)."""
    from neuron_explorer.engine.measure.probe import toxic_embedding_direction

    act = cache_arrays(cache_copy)["act_pre"]
    with PatchSession(cache_copy, SMALL) as session:
        loaded = session.loaded
        direction = toxic_embedding_direction(loaded, "authors").direction.astype(np.float64)
        values = np.stack(
            [out_projection(loaded, layer).weight.detach().double().numpy().T for layer in range(act.shape[0])]
        )  # (layers, d_mlp, d_model)
        cos = values @ direction / (np.linalg.norm(values, axis=-1) * np.linalg.norm(direction))
        intervention, _ = session.intervention(Intervention("tuning-free", ()))
        ids = loaded.tokenizer(held_out_prompts[:2], return_tensors="pt", padding=True)["input_ids"]
        with intervention.hooks():
            seen, _ = iv.record_activations(loaded, input_ids=ids)
    classes = {
        "TP": (cos > 0) & (act > 0),
        "TN": (cos > 0) & (act <= 0),
        "AP": (cos <= 0) & (act > 0),
        "AN": (cos <= 0) & (act <= 0),
    }
    assert intervention.details["class_counts"] == {name: round(0.5 * int(m.sum())) for name, m in classes.items()}
    assert intervention.details["seed_words"] == "authors"  # Yang et al.'s five and five, as their edit used
    for name, members in classes.items():
        ranked = np.where(members, np.abs(cos), np.nan).ravel()
        flat = np.nanargmax(ranked) if name in ("TP", "AN") else np.nanargmin(ranked)
        layer, index = np.unravel_index(flat, act.shape)
        factor = 0.95 if name in ("TP", "AN") else 1.05
        value = seen[int(layer)][..., int(index)]
        torch.testing.assert_close(value, torch.full_like(value, factor * act[layer, index]))


def test_a_failed_or_killed_run_leaves_no_record_and_an_intact_file(cache_copy, monkeypatch):
    before = sha256_file(cache_copy)
    with PatchSession(cache_copy, SMALL) as session:
        session.ensure_baseline()
        real_measure = session.measure

        def dies(loaded, stage, intervention=None):
            if stage != "base" and stage != "dpo":
                raise KeyboardInterrupt  # what Ctrl-C or a terminated job looks like mid-evaluation
            return real_measure(loaded, stage, intervention)

        monkeypatch.setattr(session, "measure", dies)
        with pytest.raises(KeyboardInterrupt):
            session.run(Intervention("patch-mean", ("group:TP↓",)))
        from neuron_explorer.engine.patching.interventions import hook_count

        assert hook_count(session.loaded) == 0
        with pytest.raises(UserError, match="needs a neuron set"):  # refused before it reaches a session
            session.run(Intervention("zero-ablate", ()))
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
    code = main(
        ["patch", str(cache_copy), "--set", "group:TP↓", "--set", "toxic:4", "--mode", "patch-mean", *SMALL_ARGS]
    )
    out = capsys.readouterr().out
    assert code == 0 and "| base |" in out and "| DPO |" in out and "patch-mean group:TP↓ ∪ toxic:4" in out
    assert (
        main(
            [
                "patch",
                str(cache_copy),
                "--preset",
                "paper",
                *SMALL_ARGS,
                "--progress-json",
                "--max-prompts",
                "2",
                "--ppl-windows",
                "1",
                "--f1-items",
                "1",
                "--new-tokens",
                "2",
            ]
        )
        == 0
    )
    events = [from_json(line) for line in capsys.readouterr().out.splitlines()]
    runs = [e for e in events if isinstance(e, Stored)]
    assert [e.label for e in runs] == [
        "ablate top-128 toxic",
        "patch TP↓",
        "patch TN↓",
        "patch AP↓",
        "patch AN↓",
        "patch all four ↓ groups",
        "tuning-free edit (α=0.05, β=0.5)",
    ]
    assert isinstance(events[-1], Done) and "| patch all four ↓ groups |" in events[-1].summary
    assert len(annotations.list_runs(cache_copy)) == 8


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--mode", "zero-ablate"], "needs a neuron set"),
        (["--set", "group:ZZ"], "no group"),
        (["--preset", "paper", "--set", "all"], "chooses its own"),
        (["--preset", "paper", "--mode", "scale"], "chooses its own"),
        (["--set", "all", "--max-prompts", "-1"], "--max-prompts: -1 is negative"),
    ],
)
def test_patch_command_errors_are_one_line(cache_copy, capsys, argv, message):
    assert main(["patch", str(cache_copy), *SMALL_ARGS, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert annotations.list_runs(cache_copy) == []


def test_patch_command_progress_json_reports_errors(cache_copy, capsys, tmp_path):
    assert main(["patch", str(tmp_path / "missing.h5"), "--set", "all", "--progress-json"]) == 2
    events = [from_json(line) for line in capsys.readouterr().out.splitlines()]
    assert isinstance(events[-1], Failed) and "no such file" in events[-1].message


def test_preset_lists_the_papers_rows():
    specs = patching.paper_preset()
    assert [s.mode for s in specs] == ["zero-ablate"] + ["patch-mean"] * 5 + ["tuning-free"]
    assert specs[0].sets == ("toxic:128",) and specs[5].sets == ("group:reducing",)
    assert [s.positions for s in specs] == ["all"] + ["newest"] * 6  # the authors' protocol
    assert {s.positions for s in patching.paper_preset(PaperPreset(positions=Positions.ALL))} == {Positions.ALL}
    assert {s.mode for s in patching.paper_preset(PaperPreset("shift"))} == {"zero-ablate", "shift", "tuning-free"}


def test_the_holdout_rule_on_known_cases():
    eight = PromptSet([f"p{i}" for i in range(8)], "x", "sha")
    statistics, table = hold_out_for_patching(eight, 0.25)
    assert table["columns"]["source_index"].tolist() == [3, 7] and table["columns"]["text"] == ["p3", "p7"]
    assert statistics.texts == ["p0", "p1", "p2", "p4", "p5", "p6"]
    assert statistics.sha256 == sha256_texts(statistics.texts)
    assert table["attrs"]["n"] == 2 and table["attrs"]["sha256"] == sha256_texts(["p3", "p7"])
    assert hold_out_for_patching(eight, 0.0) == (eight, None)
    statistics, table = hold_out_for_patching(PromptSet(["a", "a", "b", "c"], "x", "sha"), 0.5)
    assert statistics.texts == ["a", "b"] and table["columns"]["text"] == ["c"]  # the second "a" was recorded
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match="patch-holdout"):
            hold_out_for_patching(eight, bad)


def shipped_templates(text: str, templates: dict) -> set[str]:
    """The situation, lead-in or standalone prompt of a shipped prompt, found by plain string search."""
    found = {f"situation {s}" for split in templates["situations"].values() for s in split if text.startswith(s)}
    found |= {f"lead-in {x}" for split in templates["lead_ins"].values() for x in split if text.endswith(f'"{x}')}
    found |= {f"standalone {x}" for split in templates["standalone"].values() for x in split if text == x}
    assert found, text
    return found


@pytest.mark.parametrize("source,fraction", [("builtin:heldout", 0.5), ("builtin", 0.3)])
def test_shipped_prompts_are_held_out_by_template(source, fraction):
    from neuron_explorer.engine.measure.prompts import SPLIT_BY_TEMPLATE, TEMPLATES_FILE, load_prompts

    templates = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
    loaded = load_prompts(source)
    statistics, table = hold_out_for_patching(loaded, fraction)
    held = table["columns"]["text"]
    used = {
        name: set().union(*(shipped_templates(t, templates) for t in texts))
        for name, texts in (("statistics", statistics.texts), ("held", held))
    }
    assert not used["statistics"] & used["held"]  # no situation, lead-in or standalone prompt on both sides
    dropped = len(loaded.texts) - len(statistics.texts) - len(held)
    assert dropped == table["attrs"]["n_dropped"] <= 0.1 * len(loaded.texts)
    assert abs(len(held) / (len(held) + len(statistics.texts)) - fraction) < 0.05
    assert table["attrs"]["split"] == SPLIT_BY_TEMPLATE
    assert [loaded.texts[i] for i in table["columns"]["source_index"]] == held


def test_other_prompts_are_held_out_by_prompt_and_say_not_out_of_template():
    _, table = hold_out_for_patching(PromptSet([f"p{i}" for i in range(8)], "x", "sha"), 0.5)
    assert "out of prompt, not out of template" in table["attrs"]["split"]
    # one shipped prompt among user prompts: the set is not the shipped compositions, so it is split by prompt
    from neuron_explorer.engine.measure.prompts import compose_builtin

    mixed = PromptSet(compose_builtin("heldout")[:3] + ["my own prompt"], "x", "sha")
    assert "not out of template" in hold_out_for_patching(mixed, 0.5)[1]["attrs"]["split"]


def test_compute_holds_every_second_prompt_out_and_runs_evaluate_on_them(
    cache_copy, prompts, statistics_prompts, held_out_prompts
):
    with CacheReader(cache_copy) as reader:
        assert reader.prompt_texts() == statistics_prompts and reader.info.n_prompts == len(statistics_prompts)
        assert reader.prompt_activations(0, 0).height == len(statistics_prompts)
        held = reader.patch_prompts()
        assert held.texts == held_out_prompts and held.source_indices.tolist() == list(range(1, len(prompts), 2))
        assert held.attrs["fraction"] == 0.5 and held.attrs["sha256"] == sha256_texts(held_out_prompts)
        assert reader.info.provenance["prompts"]["sha256"] == sha256_texts(statistics_prompts)
    with PatchSession(cache_copy, SMALL) as session:
        run = session.run(Intervention("shift", ("group:TP↓",)), save=False)
    record = run.settings["prompts"]
    assert record["selection"] == "held out by compute" and record["n"] == SMALL.max_prompts
    assert record["sha256"] == sha256_texts(held_out_prompts[: SMALL.max_prompts])
    assert record["source_indices"] == [1, 3, 5, 7]
    assert record["in_statistics"] == 0 and record["disjoint_from_statistics"] is True
    assert "out of prompt, not out of template" in record["split"]  # the fixture's prompts are no templates
    assert [sample["prompt"] for sample in run.samples] == held_out_prompts[: SMALL.samples]


def test_user_prompts_are_counted_against_the_statistics_prompts_with_a_plain_warning(
    cache_copy, tmp_path, capsys, statistics_prompts, held_out_prompts
):
    given = [statistics_prompts[0], "A brand new prompt", statistics_prompts[2], held_out_prompts[1]]
    (tmp_path / "mine.txt").write_text("\n".join(given) + "\n")
    assert (
        main(["patch", str(cache_copy), "--set", "group:TP↓", "--prompts", str(tmp_path / "mine.txt"), *SMALL_ARGS])
        == 0
    )
    captured = capsys.readouterr()
    assert "warning: 2 of the 4 evaluation prompts are among the 6 prompts" in captured.err
    assert "WARNING: 2 of them are statistics prompts" in captured.out
    (run,) = annotations.list_runs(cache_copy)
    record = run.settings["prompts"]
    assert record["selection"] == "given (--prompts)" and record["in_statistics"] == 2
    assert record["disjoint_from_statistics"] is False and record["sha256"] == sha256_texts(given)
    assert run.settings["mode"] == "shift"  # the default mode


def test_a_cache_without_held_out_prompts_needs_prompts_or_an_in_sample_run(
    pairs, compute_cache, prompts, tmp_path, capsys
):
    path = compute_cache(*pairs["llama"], "no-holdout.h5", patch_holdout=0.0)
    capsys.readouterr()  # compute's progress bars
    with CacheReader(path) as reader:
        assert reader.patch_prompts() is None and reader.prompt_texts() == prompts
    for extra, message in [
        ((), "keeps no held-out prompts"),
        (("--in-sample", "--prompts", "x.txt"), "exclude each other"),
    ]:
        assert main(["patch", str(path), "--set", "group:TP↓", *SMALL_ARGS, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["patch", str(path), "--set", "group:TP↓", "--in-sample", *SMALL_ARGS]) == 0
    assert "WARNING: 4 of them are statistics prompts" in capsys.readouterr().out
    (run,) = annotations.list_runs(path)
    record = run.settings["prompts"]
    assert record["selection"].startswith("in sample") and record["in_statistics"] == 4
    assert record["sha256"] == sha256_texts(prompts[:4])
