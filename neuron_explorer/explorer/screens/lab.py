"""The prompt lab: one prompt through the base model, the DPO model and the base model patched; their continuations
and toxicity, the probe's lens over layers × tokens, and the prompt's top neurons in the neuron table.

The models run in a long-lived worker process (`lab_client.py`, followed by `lab_manager.py` in the app); this
screen only draws what the app's `lab` holds, when `lab_version` changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.text import Text
from textual import getters, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Header, Input, Static

from neuron_explorer.engine.lab.protocol import lens_difference

from ..job_process import JobState
from ..lab_client import LabTry
from ..messages import NeuronChosen, SortRequested
from ..state import PromptNeurons, Store
from ..widgets.footer import KeyFooter
from ..widgets.heat_map import HeatMap, Panel
from ..widgets.neuron_table import NeuronTable

if TYPE_CHECKING:
    from ..app import ExplorerApp

RUNS = (("base", "base"), ("dpo", "DPO"), ("patched", "patched"))
LENSES = {"residual": "residual", "mlp": "MLP out"}
TOXIC = 0.5  # a score shown in red from here up


class LabScreen(Screen):
    """A prompt input, the worker's status, three continuations, the heat maps and the neuron table."""

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "lab.tcss"
    AUTO_FOCUS = ""  # nothing, not the prompt box: ?, o, 1–5 and q work on arrival; enter or i starts typing
    BINDINGS = [
        Binding("enter,i", "focus_prompt", "prompt", id="lab.focus_prompt", tooltip="type a prompt"),
        Binding(
            "ctrl+r",
            "run",
            "run again",
            show=False,
            id="lab.run",
            tooltip="run the prompt in the input again (with the intervention, if any)",
        ),
        Binding(
            "escape",
            "cancel",
            "cancel",
            show=False,
            id="lab.cancel",
            tooltip="cancel the running request (else leave the input, else go back)",
        ),
        Binding(
            "a",
            "apply_marked",
            "marked",
            show=False,
            id="lab.apply_marked",
            tooltip="patch the marked neurons in the patched run (choose the mode), then run again",
        ),
        Binding(
            "p",
            "choose_target",
            "patch…",
            id="lab.patch",
            tooltip="patch a group, cluster, saved set or the marked neurons, then run again",
        ),
        Binding(
            "x",
            "clear_intervention",
            "no patch",
            show=False,
            id="lab.clear_intervention",
            tooltip="clear the intervention: the next runs are base and DPO only",
        ),
        Binding(
            "o",
            "pick_prompt",
            "prompts",
            id="lab.pick_prompt",
            tooltip="run one of the cache's prompts or of a stored run's samples",
        ),
        Binding(
            "H",
            "history",
            "history",
            show=False,
            id="lab.history",
            tooltip="re-open a prompt tried in this session (its answer, without recomputing)",
        ),
        Binding("m", "lens", "lens", id="lab.lens", tooltip="heat maps of the residual stream or of the MLP output"),
        Binding(
            "d",
            "difference",
            "difference",
            show=False,
            id="lab.difference",
            tooltip="the difference map: base − DPO or base − patched (with an intervention)",
        ),
        Binding("e", "export", "export", show=False, id="lab.export", tooltip="write the shown answer to JSON"),
        Binding("R", "restart", "restart", show=False, id="lab.restart", tooltip="restart the model worker"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.lens = "residual"
        self.difference = "dpo"  # the difference map subtracts this run from base: "dpo" or "patched"
        self.drawn: LabTry | None = None  # the try whose answer the maps and the table show

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="enter or i: type a prompt · o: the cache's prompts", id="lab-prompt")
        yield Static(id="lab-status")
        with Horizontal(id="lab-outputs"):
            for key, _ in RUNS:
                yield Static(id=f"lab-{key}", classes="lab-output")
        yield HeatMap("the probe's lens over layers × tokens shows here after a run", id="lab-heat")
        yield NeuronTable(PromptNeurons(self.store), id="lab-table")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.watch(self.app, "lab_version", self.refresh_lab, init=False)
        self.watch(self.app, "lab_prompt", self.show_prompt, init=False)
        table = self.query_one(NeuronTable)

        def redraw_table() -> None:
            table.refresh()

        self.watch(self.app, "marks_version", redraw_table, init=False)
        self.watch(self.app, "view_row", self.neurons_loaded, init=False)
        self.app.ensure_lab_worker()
        self.refresh_lab()

    def on_screen_suspend(self) -> None:
        self.app.lab_left()

    # -- drawing ---------------------------------------------------------------------------------------------
    def refresh_lab(self) -> None:
        lab = self.app.lab
        status = Text(lab.status(), style="bold red" if lab.state == JobState.FAILED else "")
        self.query_one("#lab-status", Static).update(status)
        shown = lab.shown
        result = shown.result if shown is not None else None
        for key, title in RUNS:
            self.query_one(f"#lab-{key}", Static).update(self.output(key, title, result))
        if shown is not self.drawn:
            self.drawn = shown
            self.draw_maps()
            self.draw_table()

    def output(self, key: str, title: str, result: dict | None) -> Text:
        """One run's title line (its toxicity) and continuation; what to do when there is none."""
        text = Text()
        run = (result or {}).get("runs", {}).get(key)
        if run is None or result is None:
            text.append(title, style="bold")
            text.append("\n" + self.missing(key, result), style="dim")
            return text
        if key == "patched" and result.get("intervention"):
            title = result["intervention"].get("label") or title
        score = run.get("toxicity")
        text.append(title, style="bold")
        if score is not None:
            text.append(f"  tox {score:.2f}", style="bold red" if score >= TOXIC else "bold green")
        text.append("\n" + run.get("continuation", "").strip())
        return text

    def missing(self, key: str, result: dict | None) -> str:
        if key != "patched":
            return "enter runs the prompt" if result is None else "no run"
        intervention = self.app.lab.intervention
        if intervention is None:
            return "no patch yet: p patches a group, cluster or set; a the marked neurons"
        return f"ctrl+r runs it with {intervention.name()}"

    def draw_maps(self) -> None:
        """base, DPO and (with an intervention) patched, on one scale; then base − DPO or base − patched (d)."""
        heat = self.query_one(HeatMap)
        result = self.drawn.result if self.drawn is not None else None
        runs = (result or {}).get("runs", {})
        if result is None or "base" not in runs or "dpo" not in runs:
            heat.show("", [], [], 0)
            return
        prompt_tokens = list(result.get("prompt_tokens", []))
        shown = [key for key, _ in RUNS if key in runs and "lens" in runs[key]]
        lens = {key: np.asarray(runs[key]["lens"][self.lens], dtype=float) for key in shown}
        titles = dict(RUNS)
        panels = [Panel(titles[key], lens[key], prompt_tokens + list(runs[key]["tokens"])) for key in shown]
        other = self.difference if self.difference in lens else "dpo"
        panels.append(Panel(f"base − {titles[other]}", lens_difference(lens["base"], lens[other])))
        heat.show(f"{LENSES[self.lens]} (m)", panels, [0] * len(shown) + [1], len(prompt_tokens))

    def draw_table(self) -> None:
        result = self.drawn.result if self.drawn is not None else None
        neurons = (result or {}).get("neurons")
        self.query_one(NeuronTable).show(PromptNeurons(self.store, neurons if self.store.loaded else None))

    def neurons_loaded(self) -> None:
        """The Store read every neuron after an answer came: the table can join the cache's columns now."""
        table = self.query_one(NeuronTable)
        if self.store.loaded and table.source.row_count == 0 and self.drawn is not None:
            self.draw_table()

    def show_prompt(self, prompt: str) -> None:
        self.query_one("#lab-prompt", Input).value = prompt

    # -- events ----------------------------------------------------------------------------------------------
    @on(Input.Submitted, "#lab-prompt")
    def run_prompt(self, event: Input.Submitted) -> None:
        self.app.lab_run(event.value)

    @on(SortRequested)
    def sort_table(self, event: SortRequested) -> None:
        """`s` sorts this prompt's neurons, not the Store's view."""
        event.stop()
        table = self.query_one(NeuronTable)
        table.source.sort_by(event.column)
        table.reload()

    @on(NeuronChosen)
    def open_detail(self, event: NeuronChosen) -> None:
        self.app.show_neuron(event.layer, event.index)

    # -- actions ---------------------------------------------------------------------------------------------
    def action_run(self) -> None:
        self.app.lab_run(self.query_one("#lab-prompt", Input).value)

    def action_cancel(self) -> None:
        if self.app.lab.current is not None:
            self.app.lab_cancel()
        elif self.query_one("#lab-prompt", Input).has_focus:
            self.query_one(NeuronTable).focus()
        else:
            self.app.action_back()

    def action_apply_marked(self) -> None:
        self.app.lab_apply("selection")

    def action_choose_target(self) -> None:
        self.app.lab_choose_target()

    def action_clear_intervention(self) -> None:
        self.app.lab_clear_intervention()

    def action_pick_prompt(self) -> None:
        self.app.lab_pick_prompt()

    def action_history(self) -> None:
        self.app.lab_show_history()

    def action_lens(self) -> None:
        self.lens = "mlp" if self.lens == "residual" else "residual"
        self.draw_maps()

    def action_difference(self) -> None:
        self.difference = "patched" if self.difference == "dpo" else "dpo"
        self.draw_maps()

    def action_export(self) -> None:
        self.app.lab_export()

    def action_restart(self) -> None:
        self.app.lab_restart()

    def action_focus_prompt(self) -> None:
        self.query_one("#lab-prompt", Input).focus()
