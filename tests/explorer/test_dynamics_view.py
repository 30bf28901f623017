"""Where the cache holds a checkpoint series (the synthetic one: a third, two thirds and all of the final Δ), the
overview plots each reducing group's Σ Δ per step and the neuron detail shows the neuron's Δ at each step; a cache
without one shows neither."""

from __future__ import annotations

import numpy as np

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cache.schema import REDUCING_GROUPS
from neuron_explorer.explorer.formatting import signed
from neuron_explorer.explorer.screens.detail import DetailScreen
from neuron_explorer.explorer.widgets.plots import StepGroupPlot

STEPS = ["step-100", "step-200", "final"]


async def test_the_overview_plots_the_reducing_groups_sum_per_step(make_app, series_cache, wait_until_loaded):
    with CacheReader(series_cache) as reader:
        final = reader.group_summary()
    final_sums = dict(zip(final["group"].to_list(), final["sum_contribution"].to_list(), strict=True))
    app = make_app(cache=series_cache)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        plot = app.screen.query_one("#dynamics-plot", StepGroupPlot)
        assert plot.labels == STEPS
        assert list(plot.series) == list(REDUCING_GROUPS)
        for name in REDUCING_GROUPS:
            expected = [k / 3 * final_sums[name] for k in (1, 2, 3)]
            np.testing.assert_allclose(plot.series[name], expected, rtol=1e-6, atol=1e-9)
        assert plot.size.height >= 6 and plot.size.width > 20  # drawn, not squeezed away
        drawn = plot.plt.build()
        assert "step-100" in drawn and "final" in drawn


async def test_the_detail_shows_the_neurons_delta_at_each_step(make_app, series_cache, open_first_detail, static_text):
    app = make_app(cache=series_cache)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_first_detail(app, pilot)
        layer, index = app.screen.neuron_layer, app.screen.neuron_index
        final = float(app.store.reader.neuron(layer, index)["contribution"])
        line = static_text(app.screen.query_one("#detail-dynamics"))
        steps, values = app.store.reader.neuron_dynamics(layer, index)
        assert steps == STEPS
        np.testing.assert_allclose(values, [final / 3, 2 * final / 3, final], rtol=2e-3)  # float16 storage
        for step, value in zip(steps, values, strict=True):
            assert f"{step} {signed(value)}" in line
        assert line[:3] in ("▃▆█", "▂▅█")  # the sparkline: a third, two thirds, all of the largest |Δ|


async def test_a_cache_without_a_series_shows_no_dynamics(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        assert not app.screen.query("#dynamics-plot")
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("enter")
        await wait_until_loaded(app, pilot)
        assert isinstance(app.screen, DetailScreen)
        assert app.screen.query("#detail-headline") and not app.screen.query("#detail-dynamics")
