"""Snapshots of the main screens at 80×24 and 120×40 (update with `pytest --snapshot-update`)."""

from __future__ import annotations

import pytest

from .conftest import open_store

SIZES = [(80, 24), (120, 40)]


def app_for(cache_path):
    from neuron_explorer.explorer.app import ExplorerApp

    return ExplorerApp(open_store(cache_path))


async def loaded(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


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
def test_screen(snap_compare, cache_path, size, screen, keys):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press(*keys)
        await loaded(pilot)

    assert snap_compare(app_for(cache_path), terminal_size=size, run_before=run_before)
