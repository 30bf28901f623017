"""Patch runs from the explorer: the dialog, background jobs with progress, cancel, failures, the Runs screen.

The jobs run a fake `patch` command (tests/explorer/fake_patch_job.py) that reports the real job events
without a model; tests/patching/test_explorer_jobs.py runs the real command on a tiny model.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Select

from neuron_explorer.cache import annotations
from neuron_explorer.cache.provenance import sha256_file
from neuron_explorer.cli import build_parser
from neuron_explorer.events import Cancelled, Done, Failed, Progress, Stored
from neuron_explorer.explorer.job_process import JobState
from neuron_explorer.explorer.jobs import PatchJob, apply_event, target_request
from neuron_explorer.explorer.screens.patch import JobRow, PatchDialog
from neuron_explorer.explorer.screens.runs import RunsScreen
from neuron_explorer.spec.intervention import Intervention, Positions


async def launch(pilot, app, source: str, label: str | None = None, mode: str | None = None) -> None:
    app.action_patch(source)
    await pilot.pause()
    dialog = app.screen
    assert isinstance(dialog, PatchDialog)
    if label:  # the run's label names the target; the fake job behaves by its label
        dialog.request = replace(dialog.request, target=label)
    if mode:
        dialog.query_one("#patch-mode", Select).value = mode
    dialog.query_one("#patch-prompts", Input).value = "12"
    await pilot.press("ctrl+s")
    await pilot.pause()


async def test_dialog_launches_a_background_run_that_appears_beside_base_and_dpo(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await launch(pilot, app, "group TP↓")  # the mode left as the dialog offers it: the per-token shift
        job = app.jobs[0]
        intervention = job.request.spec
        assert intervention.sets == ("group:TP↓",) and intervention.mode == "shift" and job.request.max_prompts == 12
        assert job.request.n_neurons == (app.store.frame["group"] == "TP↓").sum() > 0  # counted by other code
        args = build_parser().parse_args(["patch", *job.request.argv(cache_path)])  # what the real command reads
        assert args.progress_json and args.max_prompts == 12
        assert Intervention.from_args(args) == intervention  # the one type, from the dialog to the command
        await pilot.press("4")
        await wait_for(pilot, lambda: job.state == "done")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        assert table.row_count == 1 and len(screen.runs) == 1
        assert screen.runs[0].settings["label"] == f"shift TP↓ ({job.request.n_neurons:,})"  # names the target
        status = static_text(screen.query_one(JobRow).query_one("#job-status"))
        assert "done" in status and f"stored shift TP↓ ({job.request.n_neurons:,})" in status
        assert "a bad word" in static_text(screen.query_one("#run-samples"), width=200)


@pytest.mark.slow  # its stand-in job runs for seconds on purpose
async def test_the_interface_stays_responsive_and_c_cancels_a_run(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await launch(pilot, app, "cluster 1", label="slow cluster")
        job = app.jobs[0]
        await wait_for(pilot, lambda: job.done >= 2)
        # keys are handled while the run goes on in its subprocess (how fast: bench/explorer_bench.py, not a test)
        for key in ("2", "3", "1", "4"):
            await pilot.press(key)
            await pilot.pause()
        assert job.state == "running" and job.done < job.total
        assert app.current_mode == "runs"
        bar = app.screen.query_one(JobRow).query_one("#job-progress")
        assert bar.total == 100 and 0 < bar.progress < 100
        assert "eta" in static_text(app.screen.query_one(JobRow).query_one("#job-status"))
        await pilot.press("c")
        await wait_for(pilot, lambda: job.process.returncode is not None)
        await wait_for(pilot, lambda: job.state == "cancelled")
        await app.workers.wait_for_complete()
        assert annotations.list_runs(cache_path) == []
        assert "cancelled" in static_text(app.screen.query_one(JobRow).query_one("#job-status"))


async def test_a_failed_run_shows_its_error_and_leaves_the_file_intact(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded, static_text
):
    before = sha256_file(cache_path)
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("4")
        await launch(pilot, app, "group AN↓", label="fail here")
        job = app.jobs[0]
        await wait_for(pilot, lambda: job.state == "failed")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert job.error == "the model ran out of patience: try again"
        assert "ran out of patience" in static_text(app.screen.query_one(JobRow).query_one("#job-status"))
    assert sha256_file(cache_path) == before
    assert annotations.list_runs(cache_path) == []


async def test_two_runs_at_once_never_corrupt_each_other(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await launch(pilot, app, "group TP↓", label="first")
        await launch(pilot, app, "group TN↓", label="second")
        await wait_for(pilot, lambda: all(job.state == "done" for job in app.jobs))
        await app.workers.wait_for_complete()
        runs = annotations.list_runs(cache_path)
        assert sorted(run.settings["label"].split()[1] for run in runs) == ["first", "second"]
        assert len({run.run_id for run in runs}) == 2
        await pilot.press("4")
        await pilot.pause()
        assert app.screen.query_one("#runs-table", DataTable).row_count == 2


async def test_patching_the_marked_selection_passes_a_temporary_set_file_and_removes_it(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("2", "space", "down", "space", "p")
        await pilot.pause()
        assert isinstance(app.screen, PatchDialog)
        request = app.screen.request
        assert request.n_neurons == 2 and request.spec.sets[0].startswith("file:")
        path = Path(request.spec.sets[0].removeprefix("file:"))
        assert path.exists()
        await pilot.press("escape")  # cancelling the dialog removes the file too
        await pilot.pause()
        assert not path.exists() and app.jobs == []
        await pilot.press("p")
        await pilot.pause()
        path = Path(app.screen.request.spec.sets[0].removeprefix("file:"))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.jobs and app.jobs[0].state == "done")
        await app.workers.wait_for_complete()
        assert not path.exists()
        assert annotations.list_runs(cache_path)[0].settings["sets"] == [f"file:{path}"]


async def test_patch_without_a_target_explains_itself_and_palette_offers_patch_commands(
    make_app, fake_patch_command, wait_until_loaded
):
    from neuron_explorer.explorer.commands import palette_commands

    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("2", "p")
        await pilot.pause()
        assert not isinstance(app.screen, PatchDialog)
        assert any("mark neurons" in str(n.message) for n in app._notifications)
        names = [name for name, _, _ in palette_commands(app)]
        assert {"patch: selection", "patch: group TP↓", "patch: cancel run", "patch: cluster 1"} <= set(names)
        app.action_cancel_patch()  # nothing running: a message, no error
        await pilot.press("3", "p")
        await pilot.pause()
        assert isinstance(app.screen, PatchDialog) and app.screen.request.spec.sets[0].startswith("cluster:")


async def test_dialog_rejects_bad_numbers(make_app, fake_patch_command, wait_until_loaded):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        app.action_patch("group TP↓")
        await pilot.pause()
        dialog = app.screen
        dialog.query_one("#patch-mode", Select).value = "tuning-free"
        await pilot.pause()
        dialog.query_one("#param-tuning-free-beta", Input).value = "2"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is dialog and app.jobs == []
        dialog.query_one("#param-tuning-free-beta", Input).value = "0.25"
        dialog.query_one("#patch-prompts", Input).value = "0"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is dialog and app.jobs == []
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PatchDialog)


# Each mode's parameters, written out by hand: what the dialog must show when the mode is chosen.
PARAMETERS = {
    "shift": {"alpha"},
    "patch-live": set(),
    "patch-mean": set(),
    "scale": {"factor"},
    "constant": {"value"},
    "zero-ablate": set(),
    "mean-ablate": set(),
    "tuning-free": {"alpha", "beta"},
}


async def test_the_dialog_shows_only_the_chosen_modes_fields_and_passes_them_on(
    cache_path, make_app, fake_patch_command, wait_until_loaded
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        app.action_patch("group TP↓")
        await pilot.pause()
        dialog = app.screen
        select = dialog.query_one("#patch-mode", Select)
        offered = [value for _, value in select._options if value != Select.BLANK]
        assert offered == list(PARAMETERS)  # subtract acts on no neuron set: not offered here
        for mode, expected in PARAMETERS.items():
            select.value = mode
            await pilot.pause()
            shown = {
                widget.id.removeprefix(f"param-{mode}-")
                for widget in dialog.query(Input)
                if widget.id.startswith("param-") and widget.region.area > 0
            }
            assert shown == expected, mode
        select.value = "tuning-free"
        await pilot.pause()
        dialog.query_one("#param-tuning-free-beta", Input).value = "0.25"
        await pilot.press("ctrl+s")
        await pilot.pause()
        argv = app.jobs[0].request.argv(cache_path)
        assert argv[argv.index("--beta") + 1] == "0.25"  # given; the command fills the defaults from the registry
        assert "--alpha" not in argv and "--factor" not in argv and "--max-prompts" not in argv


def test_job_events_and_argv(monkeypatch):
    request = target_request("TP↓", ["group:TP↓"], 10, mode="scale").chosen(
        "scale", Positions.NEWEST, {"factor": "0.25"}, None
    )
    argv = request.argv(Path("x.h5"))
    assert request.name() == "scale TP↓ (10)"
    assert argv[:3] == ["x.h5", "--set", "group:TP↓"] and argv[argv.index("--factor") + 1] == "0.25"
    assert "--positions" in argv and "newest" in argv
    job = PatchJob(1, request)
    assert not apply_event(job, Progress("run: toxicity", 3, 10, eta=70))
    # what the count counts, and one ETA
    assert job.state == "running" and "prompts+windows+passages 3/10" in job.status()
    assert job.status().count("eta") == 1 and "1m10s" in job.status()
    assert not apply_event(job, Stored("run", "abc", label="scale TP↓ (10)"))
    assert apply_event(job, Done()) and job.finished and "stored scale TP↓ (10)" in job.status()
    finished = job.status()
    later = time.monotonic() + 100
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert job.status() == finished  # "done in" stops growing when the job ends
    cancelled = PatchJob(2, request)
    assert not apply_event(cancelled, Progress("run: toxicity", 1, 10))
    assert apply_event(cancelled, Cancelled()) and cancelled.finished and cancelled.state == JobState.CANCELLED
    assert cancelled.status() == "cancelled: nothing was stored"
    failed = PatchJob(3, request)
    assert apply_event(failed, Failed("out of memory")) and failed.status() == "failed: out of memory"


def test_numbers_that_could_not_be_measured_show_as_not_available():
    from neuron_explorer.explorer.screens.runs import format_value

    assert format_value(float("nan")) == "n/a" and format_value(16.96) == "16.96"
