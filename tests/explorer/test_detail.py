"""The neuron detail: next/previous neuron of the table's view, and the stored runs that patched the neuron."""

from __future__ import annotations

from neuron_explorer.cache import annotations
from neuron_explorer.cache.reader import neuron_id
from neuron_explorer.explorer.screens.detail import DetailScreen
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable


async def test_brackets_step_through_the_views_neurons_and_the_table_follows(make_app, wait_until_loaded, static_text):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("plus", "enter")  # Δ > 0 only, sorted by Δ: the view's order is the store's
        await wait_until_loaded(app, pilot)
        assert isinstance(app.screen, DetailScreen)
        second = app.store.neuron_at(1)
        await pilot.press("right_square_bracket")
        await wait_until_loaded(app, pilot)
        assert (app.screen.neuron_layer, app.screen.neuron_index) == second
        assert static_text(app.screen.query_one("#detail-headline")).startswith(neuron_id(*second))
        await pilot.press("left_square_bracket", "left_square_bracket")  # the first has no previous: a message
        await wait_until_loaded(app, pilot)
        assert (app.screen.neuron_layer, app.screen.neuron_index) == app.store.neuron_at(0)
        await pilot.press("n", "escape")
        await pilot.pause()
        assert app.screen.query_one(NeuronTable).current_neuron() == second


async def test_the_detail_lists_the_stored_runs_that_patched_the_neuron(
    cache_path, make_app, wait_until_loaded, static_text
):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        layer, index = app.store.neuron_at(0)
        annotations.save_run(
            cache_path,
            {"label": "with it", "mode": "shift", "neurons": {str(layer): [index, 63]}},
            {"toxicity": 0.2, "recovered": 0.25, "neurons": 2},
            [],
            label="with",
        )
        annotations.save_run(
            cache_path,
            {"label": "without it", "mode": "shift", "neurons": {str(layer): [i for i in range(64) if i != index]}},
            {"toxicity": 0.3, "recovered": 0.0, "neurons": 63},
            [],
            label="without",
        )
        await pilot.press("enter")
        await wait_until_loaded(app, pilot)
        history = static_text(app.screen.query_one("#detail-history"))
        assert "with it" in history and "25.0%" in history and "without it" not in history
