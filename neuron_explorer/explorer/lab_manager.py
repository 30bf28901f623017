"""The prompt lab, app side: start the model worker the first time the lab is shown, follow it in a thread worker,
send prompts, choose the intervention, re-open and export what came back.

Mixed into `ExplorerApp`, beside `JobManager`. The lab screen's keys and the palette's `lab:` commands call these.
It never touches a screen: it bumps the app's `lab_version` (the worker or a try changed) and sets `lab_prompt` (a
prompt was chosen, for the screen's input), which the lab screen watches. `LabClient.apply` is the one place that
reads the worker's events.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.reactive import reactive

from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.cache.atomic import write_json_atomically
from neuron_explorer.errors import UserError
from neuron_explorer.spec.intervention import Intervention

from .formatting import short_text
from .host import AppHost
from .job_process import JobProcess, JobState
from .jobs import PatchRequest
from .lab_client import LabClient, LabTry, format_bytes
from .messages import JobEvent
from .screens.dialogs import ChoiceDialog, PromptDialog
from .screens.patch import PatchDialog
from .targets import patch_targets


class LabManager(AppHost):
    """The lab's worker and tries live in `self.lab` (a `LabClient`)."""

    lab: LabClient
    lab_version: reactive[int]  # the app's reactives (see `ExplorerApp`) that these set
    lab_prompt: reactive[str]

    if TYPE_CHECKING:

        def patch_request(self, source: str, inline: bool = False) -> PatchRequest: ...  # `ExplorerApp`'s

    def _show_lab(self) -> None:
        if self.current_mode != "lab":
            self.switch_mode("lab")

    # -- the worker ---------------------------------------------------------------------------------------------
    def ensure_lab_worker(self) -> None:
        """Start the worker unless it was started already (it loads two models: not before the lab is shown)."""
        if self.lab.state == JobState.QUEUED:
            self.start_lab_worker()

    def start_lab_worker(self) -> None:
        self.follow_lab_worker(self.lab.start(self.opened_store.path, self.post_message))
        self.lab_version += 1

    @work(thread=True, group="lab", exit_on_error=False, description="the prompt lab's model worker")
    def follow_lab_worker(self, process: JobProcess) -> None:
        """Runs in a thread for the worker's life: each event goes back to the app's thread as a `JobEvent`."""
        process.follow()

    def lab_event(self, message: JobEvent) -> None:
        """One event of the lab's current worker (the app's `on_job_event` hands it here)."""
        ended = self.lab.apply(message)
        if message.final:
            self.notify(self.lab.status(), severity="error", timeout=30)
        elif ended is not None and ended.state == JobState.FAILED:
            self.notify(f"lab #{ended.request.id} failed: {ended.error}", severity="error", timeout=20)
        elif ended is not None and ended.state == JobState.CANCELLED:
            self.notify(f"lab #{ended.request.id} cancelled", severity="warning")
        self.lab_version += 1

    def lab_stop_worker(self) -> None:
        """Stop the model worker and free what its two models hold (in the lab, R starts it again)."""
        if self.lab.state != JobState.RUNNING:
            self.notify("the lab's model worker is not running")
            return
        memory = self.lab.worker_memory()
        self.lab.stop()
        freed = f": {format_bytes(memory)} freed" if memory else ""
        self.notify(f"the lab's model worker stopped{freed} · in the lab, R starts it again")
        self.lab_version += 1

    def lab_left(self) -> None:
        """The user left the lab: say once per worker what the idle worker still holds and how to free it."""
        if not self.lab.loaded or self.lab.state != JobState.RUNNING or self.lab.told_memory:
            return
        self.lab.told_memory = True
        memory = self.lab.worker_memory()
        held = f" ({format_bytes(memory)})" if memory else ""
        self.notify(
            f"the lab's model worker keeps both models loaded{held}: palette, lab: stop worker frees it", timeout=8
        )

    def lab_neuron_examples(self, layer: int, neuron: int, prompts: list[int]) -> None:
        """Ask the model worker (started if it is not running) for a neuron's per-token activations on these statistics
        prompts; the detail screen draws the answer when `lab_version` changes."""
        if self.lab.state != JobState.RUNNING:
            self.start_lab_worker()
        try:
            self.lab.ask_examples(layer, neuron, prompts)
        except UserError as error:
            self.notify(str(error), severity="warning")
            return
        self.lab_version += 1

    def lab_restart(self) -> None:
        """Stop the worker (whatever it is doing) and start a fresh one."""
        self._show_lab()
        self.notify("restarting the model worker…")
        self.start_lab_worker()

    # -- prompts --------------------------------------------------------------------------------------------------
    def lab_run(self, prompt: str) -> None:
        """Send ``prompt`` with the current intervention (the worker starts first if it never ran)."""
        self._show_lab()
        prompt = prompt.strip()
        if not prompt:
            self.notify("type a prompt first", severity="warning")
            return
        self.ensure_lab_worker()
        try:
            self.lab.submit(prompt)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self.lab_prompt = prompt
        self.lab_version += 1

    def lab_rerun(self) -> None:
        """The shown prompt again (after the intervention changed)."""
        if self.lab.shown is not None:
            self.lab_run(self.lab.shown.request.prompt)

    def lab_ask_prompt(self) -> None:
        self._show_lab()
        last = self.lab.history[-1].request.prompt if self.lab.history else ""
        self.push_screen(PromptDialog("Run in the lab", value=last), lambda text: self.lab_run(text) if text else None)

    def lab_cancel(self) -> None:
        """Cancel the running request."""
        if not self.lab.cancel():
            self.notify("no lab request is running")
            return
        self.notify("cancelling…", severity="warning")
        self.lab_version += 1

    def lab_pick_prompt(self) -> None:
        """Choose a statistics prompt of the cache or a stored run's sample prompt, and run it."""
        self._show_lab()
        prompts = {f"cache-{number}": text for number, text in enumerate(self.opened_store.reader.prompt_texts())}
        choices = [(f"cache  {short_text(text, 100)}", key) for key, text in prompts.items()]
        for run in sidecar.list_runs(self.opened_store.path):
            for number, sample in enumerate(run.samples):
                if sample.get("prompt"):
                    key = f"run-{run.run_id}-{number}"
                    prompts[key] = sample["prompt"]
                    choices.append((f"run {run.run_id}  {short_text(sample['prompt'], 80)}", key))
        if not choices:
            self.notify("this cache stores no prompts, and no run has samples", severity="warning")
            return
        self.push_screen(
            ChoiceDialog("Run a prompt of the cache or of a stored run", choices),
            lambda key: self.lab_run(prompts[key]) if key else None,
        )

    def lab_show_history(self) -> None:
        """Choose one of this session's tries: its stored answer shows again, its prompt goes back in the input."""
        self._show_lab()
        if not self.lab.history:
            self.notify("nothing tried yet: run a prompt first")
            return
        tries = {str(attempt.request.id): attempt for attempt in self.lab.history}
        choices = [(describe_try(attempt), key) for key, attempt in reversed(tries.items())]
        self.push_screen(
            ChoiceDialog("Re-open a try of this session", choices),
            lambda key: self.lab_reopen(tries[key]) if key else None,
        )

    def lab_reopen(self, attempt: LabTry) -> None:
        if attempt.result is not None:
            self.lab.shown = attempt
        else:
            self.notify(f"#{attempt.request.id} has no answer ({attempt.state}): ctrl+r runs it again")
        self.lab_prompt = attempt.request.prompt
        self.lab_version += 1

    def lab_export(self) -> None:
        """Write the shown answer to a JSON file (atomically)."""
        self._show_lab()
        shown = self.lab.shown
        if shown is None:
            self.notify("no answer to export yet: run a prompt first", severity="warning")
            return

        def export(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                write_json_atomically(target, shown.result)
            except (UserError, OSError) as error:
                self.notify(str(error), severity="error")
                return
            self.notify(f"wrote lab #{shown.request.id} to {target}")

        self.push_screen(
            PromptDialog(
                "Export the lab's answer to", value=f"{self.opened_store.path.stem}-lab-{shown.request.id}.json"
            ),
            export,
        )

    # -- the intervention ---------------------------------------------------------------------------------------
    def lab_apply(self, source: str) -> None:
        """Ask how to patch ``source`` ("selection", "group TP↓", "cluster 3", "set NAME") in the patched run, then
        run the shown prompt again."""
        self._show_lab()
        try:
            request = self.patch_request(source, inline=True)
        except UserError as error:
            self.notify(str(error), severity="error")
            return

        def apply(answer: PatchRequest | None) -> None:
            if answer is None or not isinstance(answer.spec, Intervention):  # the lab's dialog offers no preset
                return
            self.lab.intervention = answer.spec
            self.notify(f"the patched run applies {answer.name()} ({answer.n_neurons:,} neurons)")
            self.lab_version += 1
            self.lab_rerun()

        self.push_screen(PatchDialog(request, lab=True, source=source), apply)

    def lab_choose_target(self) -> None:
        """Choose what the patched run patches: the marked neurons or one of the palette's targets."""
        self._show_lab()
        choices = [(f"the marked neurons ({len(self.opened_store.marked):,})", "selection")]
        choices += [(target.title, target.key) for target in patch_targets(self.opened_store)]
        self.push_screen(
            ChoiceDialog("Patch in the lab's patched run", choices),
            lambda source: self.lab_apply(source) if source else None,
        )

    def lab_clear_intervention(self) -> None:
        self.lab.intervention = None
        self.notify("no intervention: the next runs are base and DPO only")
        self.lab_version += 1


def describe_try(attempt: LabTry) -> str:
    """One line of the history: id, outcome, intervention, prompt."""
    result = attempt.result or {}
    runs = result.get("runs", {})
    scores = " ".join(f"{name} {run['toxicity']:.2f}" for name, run in runs.items() if "toxicity" in run)
    intervention = attempt.request.intervention
    patch = f" [{intervention.name()}]" if intervention else ""
    return f"#{attempt.request.id} {scores or attempt.state}{patch}  {short_text(attempt.request.prompt, 60)}"
