"""The prompt lab's model worker, seen from the explorer: one long-lived subprocess and the prompts tried with it.

The app never runs a model itself: `LabClient` starts `python -m neuron_explorer lab FILE --serve`, which loads the
base and tuned models once and then answers one request at a time. Requests go to its stdin as JSON lines
(`engine.lab.protocol`); its job events come back through a `JobProcess` (read in a thread worker, posted as
`JobEvent` messages), whose final event is the worker's exit. `apply` updates the client on the app's thread, so the
state below changes in one thread.

Torch-free; tests swap the command for a fake worker (tests/explorer/fake_lab_worker.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neuron_explorer.cache.reader import neuron_id
from neuron_explorer.engine.lab.protocol import CancelRequest, ExamplesRequest, QuitRequest, RunRequest
from neuron_explorer.errors import UserError
from neuron_explorer.events import Answer, Cancelled, Failed, Message, Progress, Ready
from neuron_explorer.spec.intervention import Intervention

from .job_process import JobProcess, JobState
from .messages import JobEvent

LAB_COMMAND = (sys.executable, "-m", "neuron_explorer", "lab")
QUIT_GRACE = 1.0  # seconds a worker gets to leave on its own before it is terminated


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:,.0f} MiB"


@dataclass
class LabTry:
    """One prompt sent to the worker, and its answer once there is one."""

    request: RunRequest
    state: JobState = JobState.RUNNING  # DONE once answered
    result: dict | None = None
    error: str = ""
    stage: str = ""
    done: int = 0
    total: int = 0


@dataclass
class LabClient:
    """The worker's process and state, and this session's tries (`history`, oldest first).

    `state` is the worker process's: QUEUED until it is first started, RUNNING (starting until it said `ready`:
    `loaded`), FAILED when it could not start or crashed (`crashed`: after it was ready), CANCELLED once stopped."""

    command: tuple[str, ...] = LAB_COMMAND
    state: JobState = JobState.QUEUED
    loaded: bool = False  # the worker said `ready`
    stage: str = ""  # what the worker says it is doing (loading a model, a run's stage)
    done: int = 0
    total: int = 0
    ready_text: str = ""
    error: str = ""  # why it failed or crashed
    exit_code: int | None = None
    process: JobProcess | None = None
    history: list[LabTry] = field(default_factory=list)
    current: LabTry | None = None  # the try the worker is answering
    shown: LabTry | None = None  # the try the lab screen shows
    intervention: Intervention | None = None  # applied to the patched run of every next try
    next_id: int = 1  # the id of the next request
    told_memory: bool = False  # the user was told, on leaving the lab, what this worker holds
    asking: ExamplesRequest | None = None  # the neuron-examples request the worker is answering (detail screen)
    examples: dict[tuple[int, int], dict | str] = field(default_factory=dict)  # by neuron: the answer, or why not

    # -- the process --------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """The worker takes a prompt now."""
        return self.state == JobState.RUNNING and self.loaded and self.current is None and self.asking is None

    @property
    def crashed(self) -> bool:
        return self.state == JobState.FAILED and self.loaded

    def start(self, cache_path: Path, post: Callable[[JobEvent], object]) -> JobProcess:
        """Launch the worker (it loads the models and then says `ready`); follow the process it returns."""
        self.stop()
        self.state, self.loaded, self.error, self.exit_code, self.current = JobState.RUNNING, False, "", None, None
        self.stage, self.done, self.total = "starting the model worker", 0, 0
        self.told_memory = False
        self.process = JobProcess(
            [*self.command, str(cache_path), "--serve"], post, what="the model worker", serves_requests=True
        )
        self.process.start()
        return self.process

    def stop(self) -> None:
        """Ask the worker to quit, then terminate it; wait for it either way (no zombie)."""
        process, self.process = self.process, None
        self.current = self.asking = None
        if process is None:
            return
        self.state = JobState.CANCELLED
        process.send(QuitRequest().to_json())
        process.stop(QUIT_GRACE)

    # -- requests -----------------------------------------------------------------------------------------------
    def submit(self, prompt: str) -> LabTry:
        """Send a prompt (with the current intervention); a UserError says why it cannot be sent now."""
        if self.state != JobState.RUNNING:
            raise UserError("the model worker is not running: R restarts it")
        self._check_idle()
        request = RunRequest(id=self.next_id, prompt=prompt, intervention=self.intervention)
        self.next_id += 1
        attempt = LabTry(request)
        assert self.process is not None  # it is running
        self.process.send(request.to_json())
        self.history.append(attempt)
        self.current = attempt
        return attempt

    def ask_examples(self, layer: int, neuron: int, prompts: list[int]) -> ExamplesRequest:
        """Ask for one neuron's per-token activations on some statistics prompts (answered into `examples`)."""
        if self.state != JobState.RUNNING:
            raise UserError("the lab's model worker is not running: in the lab, R starts it")
        self._check_idle()
        request = ExamplesRequest(id=self.next_id, layer=layer, neuron=neuron, prompts=tuple(prompts))
        self.next_id += 1
        assert self.process is not None  # it is running
        self.process.send(request.to_json())
        self.examples.pop((layer, neuron), None)
        self.asking = request
        return request

    def _check_idle(self) -> None:
        if self.current is not None:
            raise UserError(f"request {self.current.request.id} is still running: escape cancels it")
        if self.asking is not None:
            raise UserError("the model worker is still reading a neuron's per-token activations: a moment")

    def cancel(self) -> bool:
        """Ask the worker to stop the running request (it answers `cancelled`); True when one was running."""
        if self.current is None or self.process is None:
            return False
        self.process.send(CancelRequest(self.current.request.id).to_json())
        self.current.stage = "cancelling"
        return True

    # -- events -------------------------------------------------------------------------------------------------
    def apply(self, message: JobEvent) -> LabTry | None:
        """Update the state from one event of the worker (those of a worker stopped since are ignored); return the
        try that the event ended (answered, failed or cancelled), if it ended one."""
        if message.process is not self.process:
            return None
        event, attempt = message.event, self.current
        if message.final:  # the worker exited (or could not be launched)
            self.exit_code = message.process.returncode
            self.state, self.process, self.current = JobState.ended_by(event), None, None
            if self.asking is not None:
                self.examples[(self.asking.layer, self.asking.neuron)] = "the model worker stopped before it answered"
                self.asking = None
            if isinstance(event, Failed):
                self.error = self.error or event.message  # what it said before it left, if it said why
            if attempt is not None:
                why = "crashed" if self.crashed else "could not start"
                attempt.state, attempt.error = JobState.FAILED, f"the model worker {why}: {self.error}"
            return attempt
        if isinstance(event, Progress):
            target = attempt if attempt is not None and self.loaded else self
            target.stage, target.done, target.total = event.stage, event.done, event.total
        elif isinstance(event, Message):
            self.stage = event.text
        elif isinstance(event, Ready):
            self.loaded, self.ready_text = True, event.text
            self.stage, self.done, self.total = "", 0, 0
        elif isinstance(event, Failed) and not self.loaded:
            self.error = event.message  # it cannot start; its exit follows
        elif isinstance(event, (Answer, Failed, Cancelled)) and self.asking is not None:
            asked, self.asking = self.asking, None
            neuron = (asked.layer, asked.neuron)
            self.examples[neuron] = (
                event.result if isinstance(event, Answer) else getattr(event, "message", "cancelled")
            )
        elif isinstance(event, (Answer, Failed, Cancelled)) and attempt is not None:
            if isinstance(event, Answer):
                attempt.state, attempt.result = JobState.DONE, event.result
                self.shown = attempt
            elif isinstance(event, Failed):
                attempt.state, attempt.error = JobState.FAILED, event.message
            else:
                attempt.state = JobState.CANCELLED
            self.current = None
            return attempt
        return None

    def worker_memory(self) -> int | None:
        """The worker's resident memory in bytes (it keeps both models loaded while the explorer runs), where the
        system says (/proc on Linux); None elsewhere."""
        if self.process is None or self.process.popen is None:
            return None
        try:
            with open(f"/proc/{self.process.popen.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def status(self) -> str:
        """One line for the lab screen's status bar."""
        count = f" {self.done}/{self.total}" if self.total else ""
        if self.state == JobState.RUNNING and not self.loaded:
            return f"starting the model worker: {self.stage}{count}"
        if self.state == JobState.RUNNING and self.current is not None:
            attempt = self.current
            progress = f" {attempt.done}/{attempt.total}" if attempt.total else ""
            return f"running #{attempt.request.id}: {attempt.stage or 'sent'}{progress} · escape cancels"
        if self.state == JobState.RUNNING and self.asking is not None:
            return f"reading {neuron_id(self.asking.layer, self.asking.neuron)}'s per-token activations (its detail)"
        if self.state == JobState.RUNNING:
            memory = self.worker_memory()
            held = f" · its memory {format_bytes(memory)}" if memory else ""
            return f"ready{f' ({self.ready_text})' if self.ready_text else ''}{held} · enter: type a prompt"
        if self.crashed:
            return f"the model worker crashed (exit {self.exit_code}): {self.error} · R restarts the worker"
        if self.state == JobState.FAILED:
            return f"the model worker could not start: {self.error} · R restarts the worker"
        return "the model worker is stopped · R starts it"
