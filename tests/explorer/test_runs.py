"""The papers' comparison from the Runs screen (one job, one progress bar), its table (toxicity ± s.e., the name
pinned) and recovered chart, renaming and deleting runs, the targets the palette and the dialogs share, and user
text that looks like markup."""

from __future__ import annotations

import math

import pytest
from textual.widgets import DataTable, ProgressBar, Select

from neuron_explorer.cache import annotations
from neuron_explorer.cache.schema import RUN_METRICS
from neuron_explorer.cli import build_parser
from neuron_explorer.explorer.commands import palette_commands
from neuron_explorer.explorer.screens.dialogs import ChoiceDialog, ConfirmDialog, PromptDialog
from neuron_explorer.explorer.screens.patch import JobRow, PatchDialog
from neuron_explorer.explorer.screens.runs import FORMATS, HEADERS, HIDDEN, PREFERRED, RunsScreen
from neuron_explorer.explorer.widgets.recovered_chart import RecoveredChart, chart_line
from neuron_explorer.figures import RecoveredRow
from neuron_explorer.spec.intervention import PaperPreset

from .fake_patch_job import FAKE_BASE, FAKE_DPO, FAKE_PRESET


async def run_paper_comparison(app, pilot, wait_for) -> None:
    await pilot.press("4")
    await pilot.pause()
    await pilot.press("P")
    await pilot.pause()
    assert isinstance(app.screen, PatchDialog)
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: app.jobs and app.jobs[0].finished)
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_P_on_the_empty_runs_screen_runs_the_papers_comparison_as_one_job(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("4")
        await pilot.pause()
        assert "P runs the papers' comparison" in static_text(app.screen.query_one("#run-samples"))
        await pilot.press("P")
        await pilot.pause()
        request = app.screen.request
        args = build_parser().parse_args(["patch", *request.argv(cache_path)])  # what the real command reads
        assert args.preset == "paper" and args.sets == [] and args.mode == "patch-mean" and args.positions is None
        assert args.progress_json and args.label is None and PaperPreset.from_args(args) == request.spec
        await pilot.press("enter")  # the papers' settings as they are: enter runs
        await wait_for(pilot, lambda: app.jobs and app.jobs[0].finished)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert len(app.jobs) == 1 and app.jobs[0].state == "done" and len(app.jobs[0].run_ids) == len(FAKE_PRESET)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        assert len(screen.query(JobRow)) == 1 and len(screen.query(ProgressBar)) == 1
        bar = screen.query_one(ProgressBar)
        assert bar.total == bar.progress == 4 * (2 + len(FAKE_PRESET))
        table = screen.query_one("#runs-table", DataTable)
        assert table.row_count == 2 + len(FAKE_PRESET) and table.fixed_columns == 1
        cells = {
            str(table.get_row_at(row)[0]): [str(cell) for cell in table.get_row_at(row)]
            for row in range(table.row_count)
        }
        columns = [str(column.label) for column in table.columns.values()]
        assert columns[:3] == ["name", "toxicity ± s.e.", "recovered"]
        for label, toxicity, sem in FAKE_PRESET:
            assert cells[label][1] == f"{toxicity:.4f} ± {sem:.4f}"
        assert cells["base (4 prompts)"][1] == "0.3000 ± 0.0200"
        # the chart: each run's recovered fraction and its s.e., worked out here from the fake's numbers
        chart = static_text(screen.query_one(RecoveredChart))
        gap = FAKE_BASE["toxicity"] - FAKE_DPO["toxicity"]
        for label, toxicity, sem in FAKE_PRESET:
            recovered = (FAKE_BASE["toxicity"] - toxicity) / gap
            error = (
                math.sqrt(
                    sem**2
                    + (1 - recovered) ** 2 * FAKE_BASE["toxicity_sem"] ** 2
                    + recovered**2 * FAKE_DPO["toxicity_sem"] ** 2
                )
                / gap
            )
            line = next(line for line in chart.splitlines() if line.startswith(label[:20]))
            assert line.rstrip().endswith(f"{recovered:+.0%} ± {error:.1%}"), line


def test_the_runs_table_names_only_columns_a_row_can_have():
    """The columns the Runs screen orders, hides, heads and formats are run metrics (cache.schema) or a row's name,
    mode, positions and a baseline's perplexity pass: a metric renamed there fails here instead of showing raw."""
    named = {*PREFERRED, *HIDDEN, *HEADERS, *FORMATS}
    known = {*RUN_METRICS, "name", "mode", "positions", "perplexity_pass"}
    assert named <= known, named - known


def test_a_chart_line_puts_the_bar_and_the_whisker_where_the_numbers_say():
    # scale 0 … 1 over 51 cells: cell = round(50 x); 0.5 ± 0.1 → bar over cells 0–25, whisker ├ at 20, ┤ at 30
    line = chart_line(RecoveredRow("r", "r", 0.5, 0.1), 0.0, 1.0, 51).plain
    assert line.index("├") == 20 and line.index("┤") == 30 and line[50] == "┊"
    assert line[:20] == "█" * 20 and line[21:26] == "█" * 5 and line[26:30] == "─" * 4
    no_error = chart_line(RecoveredRow("r", "r", 0.2, math.nan), 0.0, 1.0, 51).plain
    assert no_error.count("█") == 11 and "├" not in no_error
    unmeasured = chart_line(RecoveredRow("r", "r", math.nan, math.nan), 0.0, 1.0, 51).plain
    assert unmeasured == "│" + " " * 49 + "┊"


async def test_n_renames_and_d_deletes_the_highlighted_run(
    cache_path, make_app, fake_patch_command, wait_for, wait_until_loaded
):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await run_paper_comparison(app, pilot, wait_for)
        screen = app.screen
        table = screen.query_one("#runs-table", DataTable)
        await pilot.press("n")  # on the base row: nothing to rename
        await pilot.pause()
        assert not isinstance(app.screen, PromptDialog)
        await pilot.press(*"j" * screen.n_model_rows)  # j and k move the cursor, as in the neuron table
        await pilot.pause()
        assert table.cursor_row == screen.n_model_rows
        first = screen.highlighted_run()
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, PromptDialog)
        app.screen.query_one("#prompt-input").value = "[/INST] my ablation"
        await pilot.press("enter")
        await pilot.pause()
        stored = annotations.load_run(cache_path, first.run_id)
        assert stored.settings["label"] == "[/INST] my ablation"
        assert stored.settings["original_label"] == first.settings["label"]
        assert str(table.get_row_at(screen.n_model_rows)[0]) == "[/INST] my ablation"
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # no: nothing is deleted
        await pilot.pause()
        assert len(annotations.list_runs(cache_path)) == len(FAKE_PRESET)
        await pilot.press("d", "y")
        await pilot.pause()
        left = annotations.list_runs(cache_path)
        assert len(left) == len(FAKE_PRESET) - 1 and first.run_id not in {run.run_id for run in left}
        assert table.row_count == 2 + len(FAKE_PRESET) - 1


async def test_the_palette_the_patch_dialog_and_the_lab_picker_offer_the_papers_targets(
    cache_path, make_app, fake_patch_command, fake_lab_command, wait_for, wait_until_loaded
):
    app = make_app(patch_command=fake_patch_command, lab_command=fake_lab_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        names = {name for name, _, _ in palette_commands(app)}
        assert {"patch: toxic top-128", "patch: all four ↓ groups", "patch: preset paper"} <= names
        app.action_patch("toxic:128")
        await pilot.pause()
        dialog = app.screen
        request = dialog.request
        assert request.spec.sets == ("toxic:128",) and request.n_neurons == 128
        assert request.spec.mode == "zero-ablate"
        targets = [value for _, value in dialog.query_one("#patch-target", Select)._options]
        assert {"toxic:128", "groups:↓", "group TP↓", "cluster 1"} <= set(targets)
        dialog.query_one("#patch-target", Select).value = "groups:↓"
        await pilot.pause()
        request = dialog.request
        reducing = app.store.frame["group"].cast(str).is_in(["TP↓", "TN↓", "AP↓", "AN↓"]).sum()  # counted here
        assert request.spec.sets == ("group:reducing",) and request.n_neurons == reducing
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.jobs and app.jobs[0].finished)
        await app.workers.wait_for_complete()
        assert annotations.list_runs(cache_path)[0].settings["label"] == f"shift all four ↓ groups ({reducing:,})"
        app.lab_choose_target()
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog)
        offered = {option.id for option in app.screen.query_one("#choices").options}
        assert {"toxic:128", "groups:↓", "group TP↓", "selection"} <= offered


@pytest.mark.parametrize("where", ["runs", "detail"])
async def test_user_text_that_looks_like_markup_is_shown_as_it_is(
    cache_path, make_app, wait_until_loaded, static_text, where
):
    """A prompt or label holding "[/INST]" or "[bold]" once crashed the Runs and detail screens."""
    import h5py

    hostile = "[INST] say it [/INST] [bold]loud[/] [link=x]"
    with h5py.File(cache_path, "r+") as file:
        texts = file["prompts/text"].asstr()[:]
        del file["prompts/text"]
        file.create_dataset("prompts/text", data=[hostile] * len(texts), dtype=h5py.string_dtype())
    annotations.save_run(
        cache_path,
        {"label": "[/INST] run", "sets": ["[/x]"]},
        {"toxicity": 0.2},
        [{"prompt": hostile, "base": "[/b]", "patched": "[red]", "dpo": "[/]"}],
        label="hostile",
    )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        if where == "runs":
            await pilot.press("4")
            await pilot.pause()
            table = app.screen.query_one("#runs-table", DataTable)
            table.move_cursor(row=table.row_count - 1)
            await pilot.pause()
            shown = static_text(app.screen.query_one("#run-samples"), width=400)
        else:
            await pilot.press("2", "enter")
            await wait_until_loaded(app, pilot)
            shown = static_text(app.screen.query_one("#detail-prompts"), width=400)
        assert "[/INST]" in shown and "[bold]loud[/]" in shown
        app.screen.notify("a message quoting [/INST] and [bold]")  # Widget.notify asks for markup: refused
        await pilot.pause()
        assert app._notifications and not any(notification.markup for notification in app._notifications)


async def test_the_palette_draws_the_figures_beside_the_cache(cache_path, make_app, wait_until_loaded):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        commands = {name: callback for name, callback, _ in palette_commands(app)}
        commands["export: figures"]()
        await app.workers.wait_for_complete()
        await pilot.pause()
        folder = cache_path.with_name(f"{cache_path.stem}-figures")
        assert len(list(folder.glob("*.svg"))) == len(list(folder.glob("*.png"))) == 4
        assert any(str(folder) in str(notification.message) for notification in app._notifications)
