"""Snapshots of the main screens at 80×24 and 120×40 (update with `pytest --snapshot-update`)."""

from __future__ import annotations

import pytest

SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("screen,keys", [
    ("overview", ()),
    ("neurons", ("2",)),
    ("neurons_filtered", ("2", "plus", "l", "s")),
    ("detail", ("2", "enter")),
    ("clusters", ("3",)),
    ("runs", ("4",)),
    ("help", ("2", "question_mark")),
    ("beyond", ("6",)),
])
def test_screen(snap_compare, make_app, wait_until_loaded, size, screen, keys):
    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press(*keys)
        await wait_until_loaded(pilot.app, pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("intervention", [False, True], ids=["plain", "patched"])
def test_lab_screen(snap_compare, make_app, fake_lab_command, wait_until_loaded, wait_for, size, intervention):
    """The lab with an answer (from the stand-in worker), without and with a group patched."""
    app = make_app(lab_command=fake_lab_command)

    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press("5")
        await wait_for(pilot, lambda: app.lab.state == "ready")
        if intervention:
            app.lab.intervention = app.patch_request("group TP↓", inline=True)
        await pilot.press(*"You are a stupid", "enter")
        await wait_for(pilot, lambda: app.lab.shown is not None)
        await pilot.press("escape")  # the table has the focus: its cursor shows
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
