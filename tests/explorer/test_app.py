"""Pilot tests: every screen and key action, driven through the keyboard as a researcher would."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from neuron_explorer.cache import annotations
from neuron_explorer.explorer.screens.clusters import ClustersScreen
from neuron_explorer.explorer.screens.detail import DetailScreen
from neuron_explorer.explorer.screens.dialogs import FilterDialog, PromptDialog
from neuron_explorer.explorer.screens.help import HelpScreen
from neuron_explorer.explorer.screens.neurons import NeuronsScreen
from neuron_explorer.explorer.screens.overview import OverviewScreen
from neuron_explorer.explorer.screens.runs import RunsScreen
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable


async def test_overview_first_then_every_screen_by_number_and_escape_back(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.screen, OverviewScreen)
        for key, screen in (("2", NeuronsScreen), ("3", ClustersScreen), ("4", RunsScreen), ("1", OverviewScreen)):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, screen)
        await pilot.press("3", "escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_table_cursor_keys_and_sort(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        table = app.screen.query_one(NeuronTable)
        await pilot.press("j", "j", "down", "k")
        assert table.cursor_row == 2
        await pilot.press("G")
        assert table.cursor_row == app.store.row_count - 1
        await pilot.press("g", "pagedown")
        assert table.cursor_row == table.visible_rows
        await pilot.press("pageup")
        assert table.cursor_row == 0
        await pilot.press("l", "s")  # the column right of Δ is δ
        assert app.store.view.sort_column == "act_shift" and app.store.view.descending
        await pilot.press("s")
        assert not app.store.view.descending
        await pilot.press("h", "h", "s")
        assert app.store.view.sort_column == "group"
        for _ in range(12):
            await pilot.press("l")
        assert table.cursor_column == 13 and table.first_scrolled_column > 1  # scrolled to the last column


async def test_drawn_rows_are_the_views_rows_after_every_redraw(make_app, wait_until_loaded):
    """What the table draws on line y is row top+y-1 of the Store's view, also after the view was reloaded (a stale
    page cache once drew every row one place early, so enter opened a neuron other than the highlighted one)."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        table = app.screen.query_one(NeuronTable)
        for keys in ((), ("l", "s"), ("s",), ("j", "j")):
            await pilot.press(*keys)
            await pilot.pause()
            for y in range(1, 6):
                layer, index = app.store.neuron_at(table.top_row + y - 1)
                assert f"L{layer}/N{index} " in table.render_line(y).text
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen)
        assert (app.screen.neuron_layer, app.screen.neuron_index) == app.store.neuron_at(2)


async def test_layer_list_fills_the_table(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("tab", "down", "down", "down", "enter")  # all, L0, L1, L2
        assert app.store.view.layer == 2 and app.store.row_count == app.store.info.d_mlp
        assert isinstance(app.focused, NeuronTable)
        await pilot.press("tab", "home", "enter")
        assert app.store.view.layer is None


async def test_filter_form_sign_keys_and_clear(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("f")
        assert isinstance(app.screen, FilterDialog)
        app.screen.query_one("#filter-group").value = "AN↓"
        app.screen.query_one("#filter-value").value = "0.0005"
        await pilot.press("ctrl+s")
        filters = app.store.view.filters
        assert filters.group == "AN↓" and filters.threshold == ("contribution", "|x|>=", 0.0005)
        rows = app.store.rows(0, app.store.row_count)
        assert (rows["contribution"].abs() >= 0.0005).all()
        await pilot.press("x", "minus")
        assert app.store.view.filters.sign == "-" and app.store.view.filters.group is None
        await pilot.press("minus", "plus")
        assert app.store.view.filters.sign == "+"
        await pilot.press("x")
        assert app.store.view.filters.is_empty()
        await pilot.press("f", "escape")
        assert isinstance(app.screen, NeuronsScreen)


async def test_jump_to_an_id(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("slash")
        assert isinstance(app.screen, PromptDialog)
        await pilot.press(*"L3/N17", "enter")
        table = app.screen.query_one(NeuronTable)
        assert table.current_neuron() == (3, 17)
        await pilot.press("slash", *"L9/N1", "enter")  # no such layer: a notification, the cursor stays
        assert table.current_neuron() == (3, 17)


async def test_enter_opens_the_detail_and_escape_returns(make_app, static_text, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        neuron = app.screen.query_one(NeuronTable).current_neuron()
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.screen.query("#detail-histogram") and app.screen.query("#detail-prompts")
        assert f"L{neuron[0]}/N{neuron[1]}" in static_text(app.screen.query_one("#detail-headline"))
        await pilot.press("space", "j", "G", "g")
        assert neuron in app.store.marked
        await pilot.press("escape")
        assert isinstance(app.screen, NeuronsScreen)


async def test_mark_save_selection_and_view_as_sets(make_app, cache_path, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        first, second = app.store.neuron_at(0), app.store.neuron_at(1)
        await pilot.press("space", "space")
        assert app.store.marked == {first, second}
        await pilot.press("S")
        assert isinstance(app.screen, PromptDialog)
        app.screen.query_one("#prompt-input").value = "mine"  # instead of the suggested name
        await pilot.press("enter")
        assert annotations.load_set(cache_path, "mine").neurons == sorted([first, second])
        await pilot.press("plus", "W", "enter")
        assert annotations.load_set(cache_path, "view").description.startswith("filter all layers")
        await pilot.press("u")
        assert not app.store.marked


async def test_export_csv_from_the_table(make_app, tmp_path, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("plus", "e")
        suggested = Path(app.screen.query_one("#prompt-input").value)  # beside the cache, named for the view
        assert suggested.parent == app.store.path.parent
        assert suggested.name == f"{app.store.path.stem}-all-delta-pos-sort-delta-desc.csv"
        target = tmp_path / "out.csv"
        app.screen.query_one("#prompt-input").value = str(target)
        await pilot.press("enter")
        assert pl.read_csv(target).height == app.store.row_count


async def test_clusters_enter_shows_the_cluster_and_S_saves_it(make_app, cache_path, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("3", "down", "enter")
        assert isinstance(app.screen, NeuronsScreen)
        assert app.store.view.filters.cluster == 2
        assert set(app.store.rows(0, app.store.row_count)["cluster"].to_list()) == {2}
        await pilot.press("3", "S", "enter")
        assert annotations.load_set(cache_path, "cluster-2").description == "cluster 2"
        await pilot.press("d")
        assert not app.screen.query_one("#dendrogram").display


async def test_runs_empty_state_and_stored_runs(make_app, cache_path, static_text):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        assert "No patching runs yet" in static_text(app.screen.query_one("#run-samples"))
    runs = annotations.sidecar_dir(cache_path) / "runs"
    runs.mkdir(parents=True)
    (runs / "tp-down.json").write_text(
        json.dumps(
            {
                "created": "2026-01-01",
                "settings": {"set": "tp", "direction": "dpo→base"},
                "metrics": {"toxicity": 0.31, "perplexity": 21.5},
                "samples": [{"prompt": "You are", "base": "a jerk", "patched": "kind", "dpo": "nice"}],
            }
        )
    )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        table = app.screen.query_one("#runs-table")
        assert table.row_count == 1 and "toxicity ± s.e." in [str(c.label) for c in table.columns.values()]
        assert "kind" in static_text(app.screen.query_one("#run-samples"))


async def test_palette_offers_namespaced_commands(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("ctrl+p", *"sort: act_shift ascending")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.store.view.sort_column == "act_shift" and not app.store.view.descending
        assert isinstance(app.screen, NeuronsScreen)
        await pilot.press("ctrl+p", *"layer: 3")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.store.view.layer == 3


async def test_help_lists_the_screen_keys_and_closes(make_app, static_text, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = static_text(app.screen.query_one("#help-keys"))
        assert "jump to a neuron such as L12/N345" in text and "sort by the column under the cursor" in text
        await pilot.press("escape")
        assert isinstance(app.screen, NeuronsScreen)


async def test_q_quits(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
    assert app.return_code == 0
