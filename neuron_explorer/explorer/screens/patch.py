"""The patch dialog (mode, positions, parameters, number of prompts) and the panel that shows running jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from neuron_explorer.engine.patching import modes
from neuron_explorer.errors import UserError
from neuron_explorer.spec.intervention import INTERVENTION_POSITIONS, Intervention, PaperPreset, Positions

from ..jobs import PAPER_ROWS, PatchJob, PatchRequest
from ..targets import patch_targets
from .dialogs import Dialog

if TYPE_CHECKING:
    from ..app import ExplorerApp


def parameter_id(mode: str, name: str) -> str:
    return f"param-{mode}-{name}"


class PatchDialog(Dialog[PatchRequest]):
    """Ask what to patch and how; ctrl+s or enter runs, escape cancels.

    The target list is the palette's (`targets.patch_targets`, and the marked neurons); the modes and their
    parameter fields come from the registry (engine/patching/modes.py); only the chosen mode's fields are shown, and
    an empty field takes the mode's default. For the prompt lab (``lab=True``) it asks no number of prompts: the lab
    patches one prompt. For the papers' comparison (a request with a ``preset``) it asks how the group rows patch,
    where, and on how many prompts.
    """

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "patch.tcss"
    BINDINGS = [Binding("ctrl+s", "run", "run", id="patch_dialog.run")]

    def __init__(self, request: PatchRequest, lab: bool = False, source: str | None = None) -> None:
        """``source``: the target's key that ``request`` was made from (the target list starts there)."""
        super().__init__()
        self.request, self.lab, self.source = request, lab, source

    def compose(self) -> ComposeResult:
        request = self.request
        preset = request.preset
        offered = self.offered_modes()
        with Vertical(classes="dialog", id="patch-dialog"):
            yield Label(Text(self.title_text()), classes="dialog-title", id="patch-title")
            if not preset:
                with Horizontal(classes="field"):
                    yield Label("target", classes="field-label")
                    yield Select(
                        self.target_options(),
                        value=self.source or Select.NULL,
                        allow_blank=self.source is None,
                        prompt=request.target,
                        id="patch-target",
                    )
            with Horizontal(classes="field"):
                yield Label("group rows" if preset else "mode", classes="field-label")
                yield Select(
                    [(mode.name, mode.name) for mode in offered],
                    value=request.spec.mode,
                    allow_blank=False,
                    id="patch-mode",
                )
            yield Label(id="mode-about", classes="field-about")
            with Horizontal(classes="field"):
                yield Label("positions", classes="field-label")
                positions = [(f"{p.value}: {p.description.split(' (')[0]}", p) for p in INTERVENTION_POSITIONS]
                if preset:
                    positions.insert(0, ("authors': ablation at every position, the rest newest", Positions.AUTHORS))
                yield Select(positions, value=request.spec.positions, allow_blank=False, id="patch-positions")
            params = request.spec.params if isinstance(request.spec, Intervention) else {}
            for mode in [] if preset else offered:
                for parameter in mode.parameters:
                    given = params.get(parameter.name) if mode.name == request.spec.mode else None
                    with Horizontal(classes=f"field parameter mode-{mode.name}"):
                        yield Label(parameter.name, classes="field-label")
                        yield Input(
                            value="" if given is None else f"{given:g}",
                            type="number",
                            placeholder=f"{parameter.help} (default {parameter.describe_default()})",
                            id=parameter_id(mode.name, parameter.name),
                        )
            with Horizontal(classes="field", id="prompts-field"):
                yield Label("prompts", classes="field-label")
                yield Input(
                    value="" if request.max_prompts is None else str(request.max_prompts),
                    type="integer",
                    placeholder="the patch command's default (100)",
                    id="patch-prompts",
                )
            with Horizontal(classes="buttons"):
                yield Button("Run", variant="primary", id="run")
                yield Button("Cancel", id="cancel")

    def title_text(self) -> str:
        request = self.request
        if isinstance(request.spec, PaperPreset):
            return f"Run the papers' comparison, one job: {PAPER_ROWS}"
        count = f"{request.n_neurons:,} neuron{'' if request.n_neurons == 1 else 's'}"
        if any(spec.startswith("group:") for spec in request.spec.sets):
            count += ", v1 groups"  # the overview's default definition, the one the patch command resolves
        where = "the lab's patched run" if self.lab else "the base model"
        return f"Patch {request.target} ({count}) in {where}"

    def offered_modes(self) -> list:
        if self.request.preset:
            return [modes.get(name) for name in modes.PRESET_PATCH_MODES]
        return [mode for mode in modes.MODES.values() if mode.acts_on_set]

    def target_options(self) -> list[tuple[str, str]]:
        store = self.app.opened_store
        options = [(f"marked neurons ({len(store.marked):,})", "selection")] if store.marked else []
        return options + [(target.title, target.key) for target in patch_targets(store)]

    def on_mount(self) -> None:
        self.show_fields(self.request.spec.mode)
        self.query_one("#prompts-field").display = not self.lab
        # the papers' comparison comes with the papers' settings: enter runs it; elsewhere, choose the mode first
        self.query_one("#run" if self.request.preset else "#patch-mode").focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "patch-mode":
            self.show_fields(str(event.value))
        elif event.select.id == "patch-target" and event.value is not Select.NULL and event.value != self.source:
            self.change_target(str(event.value))

    def change_target(self, source: str) -> None:
        """Another target: a fresh request for it (its own count and first mode)."""
        try:
            request = self.app.patch_request(source, inline=self.lab)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self.remove_files()
        self.request, self.source = request, source
        self.query_one("#patch-title", Label).update(Text(self.title_text()))
        self.query_one("#patch-mode", Select).value = request.spec.mode

    def remove_files(self) -> None:
        for path in self.request.cleanup:
            path.unlink(missing_ok=True)

    def show_fields(self, mode: str) -> None:
        """The chosen mode's description and only its parameters."""
        self.query_one("#mode-about", Label).update(Text(modes.get(mode).description))
        for row in self.query(".parameter"):
            row.display = row.has_class(f"mode-{mode}")

    def on_input_submitted(self) -> None:
        self.action_run()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()
        else:
            self.action_cancel()

    def action_cancel(self) -> None:
        self.remove_files()  # a temporary set file of the marked neurons: no run will read it
        self.dismiss(None)

    def action_run(self) -> None:
        mode = modes.get(str(self.query_one("#patch-mode", Select).value))
        parameters = () if self.request.preset else mode.parameters
        texts = {
            parameter.name: self.query_one(f"#{parameter_id(mode.name, parameter.name)}", Input).value.strip()
            for parameter in parameters
        }
        given = {name: text for name, text in texts.items() if text}
        prompts = self.query_one("#patch-prompts", Input).value.strip()
        try:
            positions = Positions.parse(self.query_one("#patch-positions", Select).value)
            if prompts and not (prompts.isdigit() and int(prompts) >= 1):
                raise UserError(f"prompts: '{prompts}' is not a number of prompts (1 or more)")
            request = self.request.chosen(mode.name, positions, given, int(prompts) if prompts else None)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self.dismiss(request)


class JobRow(Vertical):
    """One job: its name, a progress bar with ETA and its status line (the error, when it failed)."""

    def __init__(self, job: PatchJob) -> None:
        super().__init__(classes="job-row")
        self.job = job

    def compose(self) -> ComposeResult:
        yield Static(id="job-title", classes="job-title")
        yield ProgressBar(total=None, show_eta=False, id="job-progress")  # the job's own ETA is in its status
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
