"""Every number explained: one group definition (v1) on the overview, in the filter and in the patch dialog (v3 one
key away), the glossary in help, the legend of the column under the cursor, ▼/▲ for sorting (↓/↑ name groups)."""

from __future__ import annotations

import polars as pl

from neuron_explorer.cache.schema import GROUP_NAMES
from neuron_explorer.explorer.screens.help import HelpScreen
from neuron_explorer.explorer.state import COLUMNS, Filters
from neuron_explorer.explorer.widgets.group_bars import GroupBars
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable


def group_counts(text: str) -> dict[str, int]:
    """group -> n, read from the overview's bars as shown."""
    counts = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in GROUP_NAMES:
            counts[parts[0]] = int(parts[1].replace(",", ""))
    return counts


async def test_the_overview_the_filter_and_the_patch_dialog_count_one_group_definition(
    make_app, wait_until_loaded, static_text
):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        frame = app.store.frame
        shown = group_counts(static_text(app.screen.query_one(GroupBars)))
        for group in GROUP_NAMES:
            app.set_filters(Filters(group=group))
            assert shown[group] == app.store.row_count == app.patch_request(f"group {group}").n_neurons
        await pilot.press("1", "v")
        await pilot.pause()
        v3 = group_counts(static_text(app.screen.query_one(GroupBars)))
        # v3, counted here from the columns: Δ > 0 for ↓ rows (Δ < 0 for ↑), by sign class of cos_pre and ā_pre
        for group in GROUP_NAMES:
            toxic = pl.col("cos_pre") > 0 if group[0] == "T" else pl.col("cos_pre") <= 0
            active = pl.col("act_pre") > 0 if group[1] == "P" else pl.col("act_pre") <= 0
            sign = pl.col("contribution") > 0 if group.endswith("↓") else pl.col("contribution") < 0
            assert v3[group] == frame.filter(toxic & active & sign).height, group
        assert "v3" in static_text(app.screen.query_one("#groups-title"))


async def test_help_explains_every_term_and_column(make_app, wait_until_loaded, static_text):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        for screen in ("1", "2", "3", "4"):
            await pilot.press(screen, "f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            text = static_text(app.screen.query_one("#help-glossary"), width=300)
            for term in (
                "T / A",
                "P / N",
                "↓ / ↑",
                "v1 groups",
                "v3 groups",
                "v2 share",
                "ā",
                "recovered",
                "heat maps",
                *(f"column {column.label} " for column in COLUMNS),
            ):
                assert term in text, term
            await pilot.press("escape")


async def test_the_legend_line_says_what_the_cursor_column_holds_and_sorting_uses_triangles(
    make_app, wait_until_loaded, static_text
):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        table = app.screen.query_one(NeuronTable)
        assert static_text(app.screen.query_one("#column-about")).startswith("Δ: Δ_i = P_pre − P_dpo")
        await pilot.press("l")
        await pilot.pause()
        assert static_text(app.screen.query_one("#column-about")).startswith("δ: δ_i = ā_pre − ā_dpo")
        await pilot.press("s")
        await pilot.pause()
        status = static_text(app.screen.query_one("#view-status"))
        assert "sort δ▼" in status and "↓" not in status
        header = "".join(segment.text for segment in table.render_line(0))
        assert "δ▼" in header and "↓" not in header and "↑" not in header
        await pilot.press("s")
        await pilot.pause()
        assert "sort δ▲" in static_text(app.screen.query_one("#view-status"))


async def test_at_80_columns_the_table_shows_whole_columns_only(make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        table = app.screen.query_one(NeuronTable)
        labels = {column.label for column in COLUMNS} | {column.label + "▼" for column in COLUMNS}
        for _ in range(len(COLUMNS)):
            header = "".join(segment.text for segment in table.render_line(0)).split()
            assert header and set(header) <= labels, header  # a cut column would leave a stub like "c"
            await pilot.press("l")
            await pilot.pause()
