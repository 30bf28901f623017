"""How state reaches the screens: marks, view changes and finished runs redraw the screens that show them, and a
worker that raises opens an error dialog instead of ending the app."""

from __future__ import annotations

from textual.widgets import DataTable

from neuron_explorer.explorer.jobs import PatchRequest
from neuron_explorer.explorer.screens.detail import DetailScreen
from neuron_explorer.explorer.screens.dialogs import ErrorDialog
from neuron_explorer.explorer.screens.runs import RunsScreen
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable
from neuron_explorer.spec.intervention import Intervention


async def test_a_mark_made_on_the_detail_screen_shows_on_the_neuron_screen(make_app, wait_until_loaded, static_text):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        screen = app.screen
        table = screen.query_one(NeuronTable)
        neuron = table.current_neuron()
        assert "marked" not in static_text(screen.query_one("#view-status"))
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("space", "escape")
        await pilot.pause()
        assert app.screen is screen and neuron in app.store.marked
        assert "1 marked" in static_text(screen.query_one("#view-status"))
        assert table.render_line(1).text.startswith("● L")


async def test_the_runs_table_keeps_the_keyboard_when_a_run_finishes_on_the_runs_screen(
    make_app, fake_patch_command, wait_for, wait_until_loaded
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("4")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        job = app.start_patch(PatchRequest("group TP↓", 3, Intervention("shift", ("group:TP↓",), label="first")))
        await wait_for(pilot, lambda: job.finished)
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = screen.query_one("#runs-table", DataTable)
        assert table.row_count == 1
        assert app.focused is table


async def test_a_worker_that_raises_opens_an_error_dialog_and_the_app_goes_on(make_app, wait_until_loaded, monkeypatch):
    app = make_app()

    def broken(layer, index):
        raise OSError("the disk went away")

    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        monkeypatch.setattr(app.store.reader, "neuron", broken)
        await pilot.press("2", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog)
        assert "reading the neuron failed" in str(app.screen.query_one(".dialog-title").content)
        assert "OSError: the disk went away" in str(app.screen.query_one("#error-message").content)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen) and app.is_running
