"""The patch dialog (mode, positions, parameters, number of prompts) and the panel that shows running jobs."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from ..jobs import MODES, PatchJob, PatchRequest
from .dialogs import Dialog


class PatchDialog(Dialog[PatchRequest]):
    """Ask how to patch a chosen set of neurons; ctrl+s or enter runs, escape cancels."""

    CSS_PATH = "patch.tcss"
    BINDINGS = [Binding("ctrl+s", "run", "run", id="patch_dialog.run")]

    def __init__(self, request: PatchRequest) -> None:
        super().__init__()
        self.request = request

    def compose(self) -> ComposeResult:
        request = self.request
        with Vertical(classes="dialog", id="patch-dialog"):
            count = f"{request.n_neurons:,} neuron{'' if request.n_neurons == 1 else 's'}"
            yield Label(f"Patch {request.target} ({count}) in the base model", classes="dialog-title")
            with Horizontal(classes="field"):
                yield Label("mode", classes="field-label")
                yield Select([(f"{name}: {text}", name) for name, text in MODES], value=request.mode,
                             allow_blank=False, id="patch-mode")
            with Horizontal(classes="field"):
                yield Label("positions", classes="field-label")
                yield Select([("every position (perplexity too)", "all"),
                              ("newest position only (the authors' protocol; perplexity as in generation)",
                               "newest")],
                             value=request.positions, allow_blank=False, id="patch-positions")
            with Horizontal(classes="field"):
                yield Label("α / factor", classes="field-label")
                yield Input(placeholder="α default", type="number", id="patch-alpha")
                yield Input(value=f"{request.factor:g}", placeholder="factor", type="number", id="patch-factor")
            with Horizontal(classes="field"):
                yield Label("β / value", classes="field-label")
                yield Input(value=f"{request.beta:g}", placeholder="β", type="number", id="patch-beta")
                yield Input(value=f"{request.value:g}", placeholder="value", type="number", id="patch-value")
            with Horizontal(classes="field"):
                yield Label("prompts", classes="field-label")
                yield Input(value=str(request.max_prompts), type="integer", id="patch-prompts")
            yield Label("α: shift/tuning-free · factor: scale · β: tuning-free · value: constant",
                        classes="dialog-hint")
            with Horizontal(classes="buttons"):
                yield Button("Run", variant="primary", id="run")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#patch-mode", Select).focus()

    def on_input_submitted(self) -> None:
        self.action_run()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()
        else:
            self.action_cancel()

    def _number(self, widget_id: str, kind=float):
        text = self.query_one(widget_id, Input).value.strip()
        return kind(text) if text else None

    def action_run(self) -> None:
        try:
            alpha = self._number("#patch-alpha")
            factor = self._number("#patch-factor")
            beta = self._number("#patch-beta")
            value = self._number("#patch-value")
            prompts = self._number("#patch-prompts", int)
        except ValueError as error:
            self.notify(f"not a number: {error}", severity="error")
            return
        if prompts is not None and prompts < 1:
            self.notify("the number of prompts must be at least 1", severity="error")
            return
        if beta is not None and not 0 < beta <= 1:
            self.notify("β must be in (0, 1]", severity="error")
            return
        request = self.request
        request.mode = str(self.query_one("#patch-mode", Select).value)
        request.positions = str(self.query_one("#patch-positions", Select).value)
        request.alpha = alpha
        request.factor = request.factor if factor is None else factor
        request.beta = request.beta if beta is None else beta
        request.value = request.value if value is None else value
        request.max_prompts = prompts or request.max_prompts
        self.dismiss(request)


class JobRow(Vertical):
    """One job: its name, a progress bar with ETA and its status line (the error, when it failed)."""

    def __init__(self, job: PatchJob) -> None:
        super().__init__(classes="job-row")
        self.job = job

    def compose(self) -> ComposeResult:
        yield Static(id="job-title", classes="job-title")
        yield ProgressBar(total=None, show_eta=True, id="job-progress")
        yield Static(id="job-status", classes="job-status")

    def on_mount(self) -> None:
        self.refresh_job()

    def refresh_job(self) -> None:
        job = self.job
        style = {"failed": "bold red", "cancelled": "yellow", "done": "green"}.get(job.state, "bold")
        self.query_one("#job-title", Static).update(Text(f"run {job.number}: {job.request.name()}", style=style))
        bar = self.query_one("#job-progress", ProgressBar)
        if job.total:
            bar.update(total=job.total, progress=job.done)
        bar.display = not job.finished or job.state == "done"
        self.query_one("#job-status", Static).update(Text(job.status(), style="red" if job.state == "failed" else ""))


class JobsPanel(Vertical):
    """Every job launched in this session, newest first; hidden while there are none."""

    def __init__(self, jobs: list[PatchJob], **kwargs) -> None:
        super().__init__(**kwargs)
        self.jobs = jobs

    def on_mount(self) -> None:
        self.refresh_jobs()

    def refresh_jobs(self) -> None:
        self.display = bool(self.jobs)
        rows = {row.job.number: row for row in self.query(JobRow)}
        for job in self.jobs:
            if job.number in rows:
                rows[job.number].refresh_job()
            else:
                self.mount(JobRow(job), before=0)
