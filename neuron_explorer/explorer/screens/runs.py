"""Patching runs stored beside the cache, side by side with the base and DPO models' own evaluation, and the
progress of runs launched from this session."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual import getters, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from neuron_explorer.cache import layout
from neuron_explorer.cache.annotations import PatchRun, delete_run, list_runs, load_baseline, rename_run, sidecar_dir
from neuron_explorer.errors import UserError
from neuron_explorer.figures import RecoveredRow, recovered_rows

from ..jobs import PAPER_ROWS
from ..state import Store
from ..widgets.footer import KeyFooter
from ..widgets.recovered_chart import RecoveredChart
from .dialogs import ConfirmDialog, PromptDialog
from .patch import JobsPanel

if TYPE_CHECKING:
    from ..app import ExplorerApp

EMPTY_STATE = "\n\n".join(
    [
        "No patching runs yet.",
        "P runs the papers' comparison as one background job (one progress bar): {rows}. Then this screen shows each "
        "run's toxicity ± s.e. beside base and DPO, and a chart of the fraction of DPO's effect each recovers.",
        "A patching run changes chosen neurons' activations in the base model (the DPO model's mean, a shift, an "
        "ablation or the tuning-free edit), measures toxicity, perplexity and F1 again, and reports the fraction of "
        "DPO's effect it recovers. This screen lists every run stored in {sidecar}/runs/.",
        "One run at a time: p on marked neurons (neurons screen) or a cluster (clusters screen), or the palette "
        '(ctrl+p, "patch: toxic top-128", "patch: all four ↓ groups"); on the command line: '
        "neuron-explorer patch FILE --preset paper",
    ]
)

# The columns shown first, in this order; other metrics follow alphabetically. "toxicity" shows "mean ± s.e.".
PREFERRED = (
    "name",
    "toxicity",
    "recovered",
    "perplexity",
    "f1",
    "mode",
    "neurons",
    "probe_change",
    "n_prompts",
    "positions",
)
HIDDEN = {
    "toxicity_sem",
    "base_toxicity",
    "dpo_toxicity",
    "base_perplexity",
    "dpo_perplexity",
    "seconds",
    "n_tokens",
    "n_f1",
    "probe_projection",
    "recovered_probe",
    "perplexity_pass",
    "check_toxicity_sem",
}
HEADERS = {"toxicity": "toxicity ± s.e.", "probe_change": "Δ probe"}
# One format per column (other numbers: 4 significant digits).
FORMATS = {
    "toxicity": "{:.4f}",
    "recovered": "{:.1%}",
    "perplexity": "{:.2f}",
    "f1": "{:.4f}",
    "probe_change": "{:+.3f}",
    "check_toxicity": "{:.4f}",
}


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
    for sample in run.samples:  # Text, never markup: a prompt may hold "[/INST]"
        table.add_row(
            *(Text(" ".join(str(sample.get(name, "")).split())) for name in ("prompt", "base", "patched", "dpo"))
        )
    return table


def settings_fields(run: PatchRun) -> Table:
    """A run's settings as labelled fields (lists and records summarised, never a Python repr)."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("run", Text(run.run_id))
    table.add_row("created", Text(run.created))
    for key, value in run.settings.items():
        if key in ("neurons", "layers", "prompts", "corpus", "evaluation", "cache", "label"):
            continue
        table.add_row(key.replace("_", " "), Text(field_text(value)))
    return table


def field_text(value) -> str:
    """A setting's value in words: lists joined, records as name=value, a temporary set file by what it held."""
    if isinstance(value, list):
        shown = [str(item) for item in value if not str(item).startswith("file:")]
        if len(shown) < len(value):
            shown.append("the marked neurons (passed as a temporary file)")
        return ", ".join(shown) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{name}={field_text(item)}" for name, item in value.items()) or "none"
    return str(value)


class RunsScreen(Screen):
    """Rows: base and DPO (the cache's evaluation, and the runs' own baselines) and every stored run; columns:
    their metrics, the run's name pinned on the left. Below: the recovered-fraction chart, the highlighted run's
    settings and its generations, prompt / base / patched / DPO. It follows the app's `runs_version` (reads the runs
    again) and `jobs_version` (redraws the jobs' progress)."""

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "runs.tcss"
    BINDINGS = [
        Binding(
            "P",
            "paper",
            "paper comparison",
            id="runs.paper",
            tooltip="run the papers' comparison (patch --preset paper) as one background job",
        ),
        Binding("n", "rename", "rename", id="runs.rename", tooltip="give the highlighted run another name"),
        Binding("d,delete", "delete", "delete", id="runs.delete", tooltip="delete the highlighted run's record"),
        Binding("c", "cancel_job", "cancel run", id="runs.cancel", tooltip="stop the running patch job"),
        Binding("r", "reload", "reload", show=False, id="runs.reload", tooltip="read the stored runs again"),
        Binding("j", "row(1)", "down", show=False, id="runs.down", tooltip="next row (as in the neuron table)"),
        Binding("k", "row(-1)", "up", show=False, id="runs.up", tooltip="previous row"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.runs: list[PatchRun] = []
        self.n_model_rows = 0
        self.recovered: list[RecoveredRow] = []  # the chart's rows, one per run
        self.reported_problems: set[str] = set()  # skipped run records, each shown once

    def compose(self) -> ComposeResult:
        yield Header()
        yield JobsPanel(self.app.jobs, id="jobs-panel")
        yield DataTable(id="runs-table", cursor_type="row", fixed_columns=1)
        with VerticalScroll(id="run-detail"):
            yield RecoveredChart(id="runs-chart")
            yield Static(id="run-samples")
        yield KeyFooter()

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
        rows += [
            {
                "name": run.settings.get("label", run.run_id),
                "mode": run.settings.get("mode", ""),
                "positions": run.settings.get("positions", ""),
                **run.metrics,
            }
            for run in self.runs
        ]
        table = self.query_one("#runs-table", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        samples = self.query_one("#run-samples", Static)
        self.recovered = recovered_rows(self.store.path, self.runs)
        self.refresh_bindings()
        if not rows:
            table.display = False
            self.query_one(RecoveredChart).show([])
            samples.update(Text(EMPTY_STATE.format(rows=PAPER_ROWS, sidecar=sidecar_dir(self.store.path).name)))
            return
        table.display = True
        present = {key for row in rows for key in row}
        columns: list[str] = [c for c in PREFERRED if c in present] + sorted(present - set(PREFERRED) - HIDDEN)
        for column in columns:
            table.add_column(HEADERS.get(column, column), key=column)
        for number, row in enumerate(rows):
            table.add_row(*(_cell(column, row) for column in columns), key=str(number))
        table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))
        table.focus()
        self.show_samples(table.cursor_row)

    def _model_rows(self) -> list[dict]:
        """Base and DPO: from the cache's evaluation table (the build's settings), and from each baseline that a
        stored run was compared with (the runs' own settings)."""
        reader = self.store.reader
        rows = []
        if reader.has(layout.EVALUATION):
            for row in reader.table(layout.EVALUATION).iter_rows(named=True):
                name = str(row.get("setting", row.get("model", "?")))
                rows.append(
                    {"name": f"{name} (cache)", **{k: v for k, v in row.items() if k not in ("setting", "model")}}
                )
        used = sorted({run.settings["baseline"] for run in self.runs if run.settings.get("baseline")})
        for key in used:
            baseline = load_baseline(self.store.path, key)
            if baseline is None:
                continue
            for name in ("base", "dpo"):
                metrics = {k: v for k, v in (baseline.get(name) or {}).items() if not isinstance(v, list)}
                rows.append(
                    {
                        "name": f"{name} ({metrics.get('n_prompts', '?')} prompts)",
                        "neurons": 0 if name == "base" else "",
                        "recovered": 0.0 if name == "base" else 1.0,
                        **metrics,
                    }
                )
        return rows

    def refresh_jobs(self) -> None:
        self.query_one(JobsPanel).refresh_jobs()
        self.refresh_bindings()

    @on(DataTable.RowHighlighted, "#runs-table")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_samples(event.cursor_row)

    def highlighted_run(self) -> PatchRun | None:
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row - self.n_model_rows
        return self.runs[row] if table.display and 0 <= row < len(self.runs) else None

    def show_samples(self, row: int) -> None:
        samples = self.query_one("#run-samples", Static)
        run = self.runs[row - self.n_model_rows] if 0 <= row - self.n_model_rows < len(self.runs) else None
        self.query_one(RecoveredChart).show(self.recovered, run.run_id if run else None)
        if run is None:
            samples.update(
                Text(
                    "base and DPO rows: the models' own evaluation; choose a run to see its settings and "
                    "generations beside theirs",
                    style="dim",
                )
            )
            return
        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_row(settings_fields(run))
        grid.add_row(samples_table(run))
        samples.update(grid)

    def action_row(self, step: int) -> None:
        table = self.query_one("#runs-table", DataTable)
        (table.action_cursor_down if step > 0 else table.action_cursor_up)()

    def action_paper(self) -> None:
        self.app.action_patch_preset()

    def action_rename(self) -> None:
        run = self.highlighted_run()
        if run is None:
            self.notify("choose a run (not a base or DPO row) to rename", severity="warning")
            return

        def rename(label: str | None) -> None:
            if not label:
                return
            try:
                rename_run(self.store.path, run.run_id, label)
            except (UserError, OSError) as error:
                self.notify(str(error), severity="error")
                return
            self.app.runs_version += 1

        self.app.push_screen(PromptDialog("Rename the run", value=run.settings.get("label", run.run_id)), rename)

    def action_delete(self) -> None:
        run = self.highlighted_run()
        if run is None:
            self.notify("choose a run (not a base or DPO row) to delete", severity="warning")
            return

        def delete(yes: bool | None) -> None:
            if not yes:
                return
            try:
                delete_run(self.store.path, run.run_id)
            except (UserError, OSError) as error:
                self.notify(str(error), severity="error")
                return
            self.app.runs_version += 1

        label = run.settings.get("label", run.run_id)
        folder = sidecar_dir(self.store.path).name
        self.app.push_screen(
            ConfirmDialog(f"Delete the run '{label}'? Its record is removed from {folder}/runs/."), delete
        )

    def action_cancel_job(self) -> None:
        self.app.action_cancel_patch()

    def action_reload(self) -> None:
        self.reload()

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "cancel_job":
            return any(not job.finished for job in self.app.jobs)
        if action in ("rename", "delete"):
            return bool(self.runs)
        return True


def _cell(column: str, row: dict) -> Text:
    """One cell as Text (never markup: a run's label is the user's); toxicity as "mean ± s.e."."""
    value = row.get(column, "")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return Text(format_value(value))
    text = (
        FORMATS.get(column, "{}").format(value) if math.isfinite(value) and column in FORMATS else format_value(value)
    )
    sem = row.get("toxicity_sem")
    if column == "toxicity" and isinstance(sem, float) and math.isfinite(sem):
        text += f" ± {sem:.4f}"
    return Text(text, justify="right")
