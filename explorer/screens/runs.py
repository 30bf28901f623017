"""Patching runs stored beside the cache, side by side with the base and DPO models' own evaluation."""

from __future__ import annotations

import polars as pl
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from neuron_explorer.cache.annotations import PatchRun, list_runs, sidecar_dir

from ..state import Store

EMPTY_STATE = """\
No patching runs yet.

A patching run replaces chosen neurons' activations in one model with the other model's and measures
toxicity, perplexity and F1 again; this screen lists every run stored in
  {sidecar}/runs/
beside the base and DPO models' own scores (the cache's `evaluation` table, when it was computed).
Save a neuron set here (space marks neurons, S saves them) and patch it with the patching command."""


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def samples_table(run: PatchRun) -> Table | Text:
    if not run.samples:
        return Text("this run stored no sample generations", style="dim")
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=True, show_lines=True)
    for name in ("prompt", "base", "patched", "dpo"):
        table.add_column(name, ratio=1, overflow="fold")
    for sample in run.samples:
        table.add_row(*(" ".join(str(sample.get(name, "")).split()) for name in ("prompt", "base", "patched", "dpo")))
    return table


class RunsScreen(Screen):
    """Rows: base, DPO (from the cache) and every stored run (from the sidecar); columns: their metrics."""

    CSS_PATH = "runs.tcss"

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.runs: list[PatchRun] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs-table", cursor_type="row")
        with VerticalScroll(id="run-detail"):
            yield Static(id="run-samples")
        yield Footer()

    def on_mount(self) -> None:
        self.runs = list_runs(self.store.path)
        evaluation = self.store.reader.table("evaluation") if self.store.reader.has("evaluation") else pl.DataFrame()
        rows = [{"name": str(row.get("model", "?")), **{k: v for k, v in row.items() if k != "model"}}
                for row in evaluation.iter_rows(named=True)]
        rows += [{"name": run.run_id, **run.metrics} for run in self.runs]
        table = self.query_one("#runs-table", DataTable)
        if not rows:
            table.display = False
            self.query_one("#run-samples", Static).update(
                EMPTY_STATE.format(sidecar=sidecar_dir(self.store.path).name))
            return
        columns = ["name"] + sorted({key for row in rows for key in row} - {"name"})
        for column in columns:
            table.add_column(column, key=column)
        for number, row in enumerate(rows):
            table.add_row(*(format_value(row.get(column, "")) for column in columns), key=str(number))
        table.focus()
        self.show_samples(0)

    @on(DataTable.RowHighlighted, "#runs-table")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_samples(event.cursor_row)

    def show_samples(self, row: int) -> None:
        n_model_rows = self.query_one("#runs-table", DataTable).row_count - len(self.runs)
        samples = self.query_one("#run-samples", Static)
        if row < n_model_rows:
            samples.update(Text("base and DPO rows come from the cache's evaluation table; "
                                "choose a run to see its generations", style="dim"))
            return
        run = self.runs[row - n_model_rows]
        settings = "  ".join(f"{key}={value}" for key, value in run.settings.items())
        samples.update(_run_view(run, settings))


def _run_view(run: PatchRun, settings: str) -> Table:
    grid = Table.grid(expand=True)
    grid.add_column()
    grid.add_row(Text(f"{run.run_id}  {settings}", style="bold"))
    grid.add_row(samples_table(run))
    return grid
