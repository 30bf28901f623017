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
])
def test_screen(snap_compare, make_app, wait_until_loaded, size, screen, keys):
    async def run_before(pilot) -> None:
        await wait_until_loaded(pilot.app, pilot)
        await pilot.press(*keys)
        await wait_until_loaded(pilot.app, pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)
