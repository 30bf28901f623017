"""The prompt lab's model worker, seen from the explorer: one long-lived subprocess and the prompts tried with it.

The app never runs a model itself: `LabClient` starts `python -m neuron_explorer lab FILE --serve`, which loads the
base and tuned models once and then answers one request at a time. Requests go to its stdin as JSON lines
(`engine.lab.protocol`); job events come back on its stdout, one per line (`neuron_explorer.events`; other lines
are a library's output and are skipped). `read` blocks on the pipe, so it runs in a thread worker and hands each
event to a callback; `apply` then updates the client on the app's thread, so the state below changes in one thread.

Textual-free and torch-free; tests swap the command for a fake worker (tests/explorer/fake_lab_worker.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from neuron_explorer.engine.lab.protocol import CancelRequest, QuitRequest, RunRequest
from neuron_explorer.errors import UserError
from neuron_explorer.events import Answer, Cancelled, Event, EventError, Failed, Message, Progress, Ready, from_json
from neuron_explorer.spec.intervention import Intervention

LAB_COMMAND = (sys.executable, "-m", "neuron_explorer", "lab")
QUIT_GRACE = 1.0  # seconds a worker gets to leave on its own before it is terminated
STDERR_TAIL = 4096  # bytes of the worker's stderr read back after it died


@dataclass(frozen=True)
class WorkerExited:
    """Not a job event: what `read` reports once the worker's stdout closed (its exit code, its last stderr line)."""

    code: int
    last_line: str = ""


@dataclass
class WorkerProcess:
    """A started worker: the process and the file that collects its stderr."""

    popen: subprocess.Popen
    stderr: IO[str]


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:,.0f} MiB"


@dataclass
class LabTry:
    """One prompt sent to the worker, and its answer once there is one."""

    request: RunRequest
    state: str = "running"  # running | answered | failed | cancelled
    result: dict | None = None
    error: str = ""
    stage: str = ""
    done: int = 0
    total: int = 0


@dataclass
class LabClient:
    """The worker's process and state, and this session's tries (`history`, oldest first)."""

    command: tuple[str, ...] = LAB_COMMAND
    state: str = "stopped"  # stopped | starting | ready | busy | crashed | failed
    stage: str = ""  # what the worker says it is doing (loading a model, a run's stage)
    done: int = 0
    total: int = 0
    ready_text: str = ""
    error: str = ""  # why it failed or crashed
    exit_code: int | None = None
    worker: WorkerProcess | None = None
    history: list[LabTry] = field(default_factory=list)
    current: LabTry | None = None  # the try the worker is answering
    shown: LabTry | None = None  # the try the lab screen shows
    intervention: Intervention | None = None  # applied to the patched run of every next try
    next_id: int = 1  # the id of the next request

    # -- the process --------------------------------------------------------------------------------------------
    def start(self, cache_path: Path) -> WorkerProcess | None:
        """Launch the worker (it loads the models and then says `ready`); None when it cannot be launched."""
        self.stop()
        self.state, self.stage, self.done, self.total = "starting", "starting the model worker", 0, 0
        self.error, self.exit_code, self.current = "", None, None
        stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        try:
            popen = subprocess.Popen([*self.command, str(cache_path), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as error:
            stderr.close()
            self.state, self.error = "failed", f"could not start the model worker: {error}"
            return None
        self.worker = WorkerProcess(popen, stderr)
        return self.worker

    @staticmethod
    def read(worker: WorkerProcess, on_event: Callable[[Event | WorkerExited], None]) -> None:
        """Blocking (call it from a thread worker): each event line of the worker's stdout, then its exit."""
        assert worker.popen.stdout is not None
        for line in worker.popen.stdout:
            try:
                event = from_json(line)
            except EventError:
                continue  # a library printed something: not ours
            on_event(event)
        code = worker.popen.wait()
        worker.stderr.seek(0, os.SEEK_END)
        worker.stderr.seek(max(worker.stderr.tell() - STDERR_TAIL, 0))
        lines = [line.strip() for line in worker.stderr.read().splitlines() if line.strip()]
        worker.stderr.close()
        on_event(WorkerExited(code, lines[-1] if lines else ""))

    def stop(self) -> None:
        """Ask the worker to quit, then terminate it; wait for it either way (no zombie)."""
        worker, self.worker = self.worker, None
        self.state, self.current = "stopped", None
        if worker is None or worker.popen.poll() is not None:
            return
        try:
            self._write(worker, QuitRequest().to_json())
            worker.popen.stdin.close()
            worker.popen.wait(QUIT_GRACE)
        except (OSError, subprocess.TimeoutExpired):
            worker.popen.terminate()
            try:
                worker.popen.wait(5)
            except subprocess.TimeoutExpired:
                worker.popen.kill()
                worker.popen.wait()

    # -- requests -----------------------------------------------------------------------------------------------
    def submit(self, prompt: str) -> LabTry:
        """Send a prompt (with the current intervention); a UserError says why it cannot be sent now."""
        if self.state in ("crashed", "failed", "stopped"):
            raise UserError(f"the model worker is {self.state}: R restarts it")
        if self.current is not None:
            raise UserError(f"request {self.current.request.id} is still running: escape cancels it")
        request = RunRequest(id=self.next_id, prompt=prompt, intervention=self.intervention)
        self.next_id += 1
        attempt = LabTry(request)
        self._write(self.worker, request.to_json())
        self.history.append(attempt)
        self.current = attempt
        if self.state == "ready":
            self.state = "busy"
        return attempt

    def cancel(self) -> bool:
        """Ask the worker to stop the running request (it answers `cancelled`); True when one was running."""
        if self.current is None or self.worker is None:
            return False
        self._write(self.worker, CancelRequest(self.current.request.id).to_json())
        self.current.stage = "cancelling"
        return True

    @staticmethod
    def _write(worker: WorkerProcess | None, line: str) -> None:
        """One request line; a dead worker is left to `read`, which reports its exit."""
        if worker is None or worker.popen.stdin is None:
            return
        try:
            worker.popen.stdin.write(line + "\n")
            worker.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    # -- events -------------------------------------------------------------------------------------------------
    def apply(self, worker: WorkerProcess, event: Event | WorkerExited) -> LabTry | None:
        """Update the state from one of `worker`'s events (those of a worker stopped since are ignored); return the
        try that the event ended (answered, failed or cancelled), if it ended one."""
        if worker is not self.worker:
            return None
        attempt = self.current
        if isinstance(event, Progress):
            target = attempt if attempt is not None and self.state == "busy" else self
            target.stage, target.done, target.total = event.stage, event.done, event.total
        elif isinstance(event, Message):
            self.stage = event.text
        elif isinstance(event, Ready):
            self.state, self.ready_text = ("busy" if attempt else "ready"), event.text
            self.stage, self.done, self.total = "", 0, 0
        elif isinstance(event, Failed) and self.state == "starting":
            self.state, self.error = "failed", event.message
        elif isinstance(event, (Answer, Failed, Cancelled)) and attempt is not None:
            if isinstance(event, Answer):
                attempt.state, attempt.result = "answered", event.result
                self.shown = attempt
            elif isinstance(event, Failed):
                attempt.state, attempt.error = "failed", event.message
            else:
                attempt.state = "cancelled"
            self.current, self.state = None, "ready"
            return attempt
        elif isinstance(event, WorkerExited):
            self.exit_code = event.code
            if self.state != "failed":
                self.state = "crashed"
                self.error = event.last_line or f"the model worker exited with code {event.code}"
            self.worker = None
            if attempt is not None:
                attempt.state, attempt.error = "failed", f"the model worker {self.state}: {self.error}"
                self.current = None
                return attempt
        return None

    def worker_memory(self) -> int | None:
        """The worker's resident memory in bytes (it keeps both models loaded while the explorer runs), where the
        system says (/proc on Linux); None elsewhere."""
        if self.worker is None:
            return None
        try:
            with open(f"/proc/{self.worker.popen.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def status(self) -> str:
        """One line for the lab screen's status bar."""
        count = f" {self.done}/{self.total}" if self.total else ""
        if self.state == "starting":
            return f"starting the model worker: {self.stage}{count}"
        if self.state == "busy" and self.current is not None:
            attempt = self.current
            progress = f" {attempt.done}/{attempt.total}" if attempt.total else ""
            return f"running #{attempt.request.id}: {attempt.stage or 'sent'}{progress} · escape cancels"
        if self.state == "ready":
            memory = self.worker_memory()
            held = f" · its memory {format_bytes(memory)}" if memory else ""
            return f"ready{f' ({self.ready_text})' if self.ready_text else ''}{held} · enter: type a prompt"
        if self.state == "failed":
            return f"the model worker could not start: {self.error} · R restarts the worker"
        if self.state == "crashed":
            return f"the model worker crashed (exit {self.exit_code}): {self.error} · R restarts the worker"
        return "the model worker is stopped · R starts it"
