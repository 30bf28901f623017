"""Patching runs stored beside the cache, side by side with the base and DPO models' own evaluation, and the
progress of runs launched from this session."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from neuron_explorer.cache.annotations import PatchRun, list_runs, load_baseline, sidecar_dir

from ..state import Store
from .patch import JobsPanel

EMPTY_STATE = "\n\n".join([
    "No patching runs yet.",
    "A patching run changes chosen neurons' activations in the base model (the DPO model's mean, a shift, an "
    "ablation or the tuning-free edit), measures toxicity, perplexity and F1 again, and reports the fraction of "
    "DPO's effect it recovers. This screen lists every run stored in {sidecar}/runs/ beside the base and DPO "
    "models' own scores.",
    "Start one with p on marked neurons (neurons screen) or on a cluster (clusters screen), from the palette "
    "(ctrl+p, \"patch: group TP↓\"), or on the command line: neuron-explorer patch FILE --set group:TP↓",
])

# The columns shown first, in this order; other metrics follow alphabetically.
PREFERRED = ("name", "mode", "neurons", "toxicity", "recovered", "perplexity", "f1", "probe_change",
             "n_prompts", "positions")
HIDDEN = {"toxicity_sem", "base_toxicity", "dpo_toxicity", "base_perplexity", "dpo_perplexity", "seconds",
          "n_tokens", "n_f1", "probe_projection", "recovered_probe", "perplexity_pass"}


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"  # not measurable (e.g. perplexity, see the run)
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
    """Rows: base and DPO (the cache's evaluation, and the runs' own baselines) and every stored run; columns:
    their metrics. Below: the highlighted run's settings and its generations, prompt / base / patched / DPO.
    It follows the app's `runs_version` (reads the runs again) and `jobs_version` (redraws the jobs' progress)."""

    CSS_PATH = "runs.tcss"
    BINDINGS = [
        Binding("c", "cancel_job", "cancel run", id="runs.cancel", tooltip="stop the running patch job"),
        Binding("r", "reload", "reload", show=False, id="runs.reload", tooltip="read the stored runs again"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.runs: list[PatchRun] = []
        self.n_model_rows = 0
        self.reported_problems: set[str] = set()  # skipped run records, each shown once

    def compose(self) -> ComposeResult:
        yield Header()
        yield JobsPanel(self.app.jobs, id="jobs-panel")
        yield DataTable(id="runs-table", cursor_type="row")
        with VerticalScroll(id="run-detail"):
            yield Static(id="run-samples")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "runs_version", self.reload, init=False)
        self.watch(self.app, "jobs_version", self.refresh_jobs, init=False)
        self.reload()

    def reload(self) -> None:
        """Read the stored runs and baselines again and redraw the table (keeps the cursor's row)."""
        problems: list[str] = []
        self.runs = list_runs(self.store.path, problems)
        for problem in sorted(set(problems) - self.reported_problems):
            self.notify(problem, severity="warning")
        self.reported_problems.update(problems)
        rows = self._model_rows()
        self.n_model_rows = len(rows)
        rows += [{"name": run.settings.get("label", run.run_id), "mode": run.settings.get("mode", ""),
                  "positions": run.settings.get("positions", ""), **run.metrics} for run in self.runs]
        table = self.query_one("#runs-table", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        samples = self.query_one("#run-samples", Static)
        if not rows:
            table.display = False
            samples.update(EMPTY_STATE.format(sidecar=sidecar_dir(self.store.path).name))
            return
        table.display = True
        present = {key for row in rows for key in row}
        columns = [c for c in PREFERRED if c in present] + sorted(present - set(PREFERRED) - HIDDEN)
        for column in columns:
            table.add_column(column, key=column)
        for number, row in enumerate(rows):
            table.add_row(*(_cell(column, row.get(column, "")) for column in columns), key=str(number))
        table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))
        table.focus()
        self.show_samples(table.cursor_row)

    def _model_rows(self) -> list[dict]:
        """Base and DPO: from the cache's evaluation table (the build's settings), and from each baseline that a
        stored run was compared with (the runs' own settings)."""
        reader = self.store.reader
        rows = []
        if reader.has("evaluation"):
            for row in reader.table("evaluation").iter_rows(named=True):
                name = str(row.get("setting", row.get("model", "?")))
                rows.append({"name": f"{name} (cache)",
                             **{k: v for k, v in row.items() if k not in ("setting", "model")}})
        used = sorted({run.settings["baseline"] for run in self.runs if run.settings.get("baseline")})
        for key in used:
            baseline = load_baseline(self.store.path, key)
            if baseline is None:
                continue
            for name in ("base", "dpo"):
                metrics = {k: v for k, v in baseline.get(name, {}).items() if not isinstance(v, list)}
                rows.append({"name": f"{name} ({metrics.get('n_prompts', '?')} prompts)", "neurons": 0
                             if name == "base" else "", "recovered": 0.0 if name == "base" else 1.0, **metrics})
        return rows

    def refresh_jobs(self) -> None:
        self.query_one(JobsPanel).refresh_jobs()
        self.refresh_bindings()

    @on(DataTable.RowHighlighted, "#runs-table")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_samples(event.cursor_row)

    def show_samples(self, row: int) -> None:
        samples = self.query_one("#run-samples", Static)
        if row < self.n_model_rows:
            samples.update(Text("base and DPO rows: the models' own evaluation; choose a run to see its generations "
                                "beside theirs", style="dim"))
            return
        run = self.runs[row - self.n_model_rows]
        settings = "  ".join(f"{key}={value}" for key, value in run.settings.items()
                             if key not in ("neurons", "layers", "prompts", "corpus", "evaluation", "cache"))
        samples.update(_run_view(run, settings))

    def action_cancel_job(self) -> None:
        self.app.action_cancel_patch()

    def action_reload(self) -> None:
        self.reload()

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "cancel_job":
            return any(not job.finished for job in self.app.jobs)
        return True


def _cell(column: str, value) -> str | Text:
    if column == "recovered" and isinstance(value, float) and math.isfinite(value):
        return Text(f"{value:.1%}", justify="right")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Text(format_value(value), justify="right")
    return format_value(value)


def _run_view(run: PatchRun, settings: str) -> Table:
    grid = Table.grid(expand=True)
    grid.add_column()
    grid.add_row(Text(f"{run.run_id}  {settings}", style="bold"))
    grid.add_row(samples_table(run))
    return grid
