"""Snapshots of the main screens at 80×24 and 120×40 (update with `pytest --snapshot-update`)."""

from __future__ import annotations

import pytest

SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize(
    "screen,keys",
    [
        ("overview", ()),
        ("overview_v3", ("v",)),
        ("filter_dialog", ("2", "f")),
        ("neurons", ("2",)),
        ("neurons_filtered", ("2", "plus", "l", "s")),
        ("detail", ("2", "enter")),
        ("clusters", ("3",)),
        ("runs", ("4",)),
        ("help", ("2", "question_mark")),
        ("beyond", ("6",)),
    ],
)
def test_screen(snap_compare, make_app, series_cache, wait_until_loaded, size, screen, keys):
    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press(*keys)
        await wait_until_loaded(pilot.app, pilot)

    # the beyond screen shows the checkpoint series; the others are drawn from a cache without one
    app = make_app(cache=series_cache) if screen == "beyond" else make_app()
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("intervention", [False, True], ids=["plain", "patched"])
def test_lab_screen(snap_compare, make_app, fake_lab_command, wait_until_loaded, wait_for, size, intervention):
    """The lab with an answer (from the stand-in worker), without and with a group patched."""
    app = make_app(lab_command=fake_lab_command)
    app.lab.worker_memory = lambda: None  # the worker's memory varies from run to run

    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press("5")
        await wait_for(pilot, lambda: app.lab.ready)
        if intervention:
            app.lab.intervention = app.patch_request("group TP↓", inline=True).spec
        await pilot.press("i", *"You are a stupid", "enter")  # i: into the prompt box
        await wait_for(pilot, lambda: app.lab.shown is not None)
        await pilot.press("escape")  # the table has the focus: its cursor shows
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_runs_after_the_papers_comparison(
    snap_compare, make_app, fake_patch_command, wait_until_loaded, wait_for, size
):
    """The Runs screen once `P` has run the papers' comparison (the stand-in job): toxicity ± s.e., the chart."""
    app = make_app(patch_command=fake_patch_command)

    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press("4", "P", "ctrl+s")
        await wait_for(pilot, lambda: app.jobs and app.jobs[0].finished)
        await app.workers.wait_for_complete()
        app.jobs[0].started = app.jobs[0].ended - 3  # "done in 3s" whatever the machine's speed
        app.jobs_version += 1
        await pilot.pause()  # the cursor stays on base: a run's row would show its id, which holds the time

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("source", ["paper", "toxic:128"])
def test_patch_dialog(snap_compare, make_app, wait_until_loaded, size, source):
    app = make_app()

    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        app.action_patch_preset() if source == "paper" else app.action_patch(source)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_lab_target_picker_filtered(snap_compare, make_app, fake_lab_command, wait_until_loaded, wait_for, size):
    """The lab's picker of what to patch (the palette's targets), filtered by typing."""
    app = make_app(lab_command=fake_lab_command)
    app.lab.worker_memory = lambda: None  # the worker's memory varies from run to run

    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press("5")
        await wait_for(pilot, lambda: app.lab.ready)
        await pilot.press("p", *"gro")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
