"""Patch runs launched from the explorer: a request (an intervention, or the papers' preset, and the job's own
extras), a job (its progress and outcome) and the runner that executes it as a subprocess.

The app never runs a model itself: `SubprocessRunner` starts `python -m neuron_explorer patch FILE ...
--progress-json` and reads one job event per line from its stdout (`neuron_explorer.events`: progress with
done/total/ETA, messages, each stored run, done or failed); other lines are a library's output and are skipped.
Cancelling terminates the subprocess; since the run record is written (atomically) only when a run has finished, a
cancelled or failed job leaves nothing half-written, and the cache file is never written.
Tests swap the command for a quick fake job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from neuron_explorer.engine.patching import modes
from neuron_explorer.events import Cancelled, Done, Event, EventError, Failed, Message, Progress, Stored, from_json
from neuron_explorer.spec.intervention import Intervention, PaperPreset, Positions

PATCH_COMMAND = (sys.executable, "-m", "neuron_explorer", "patch")
# What a patch job's progress counts: every evaluation (base, DPO, each run) generates for its toxicity prompts,
# scores its perplexity windows and generates for its F1 passages (engine/alignment/evaluation.py).
WORK_UNITS = "prompts+windows+passages"
PAPER_ROWS = "ablate the top-128 toxic neurons; patch each ↓ group alone; patch all four; the tuning-free edit"


@dataclass(frozen=True)
class PatchRequest:
    """What the patch dialog asks of a job: one intervention, or the papers' preset, and the job's own extras;
    `argv` turns it into the `patch` command's options."""

    target: str  # what was chosen, as the dialog and the run's label say it: "TP↓", "cluster 3", "marked neurons"
    n_neurons: int
    spec: Intervention | PaperPreset  # what the job runs
    max_prompts: int | None = None  # None: the command's default
    cleanup: tuple[Path, ...] = ()  # temporary files to delete when the job ends
    extra: tuple[str, ...] = ()  # further `patch` options (evaluation sizes, devices)

    @property
    def preset(self) -> bool:
        return isinstance(self.spec, PaperPreset)

    def name(self) -> str:
        return self.spec.name()

    def chosen(self, mode: str, positions: Positions, params: dict, max_prompts: int | None) -> PatchRequest:
        """This request with the dialog's choices (a one-line UserError for a bad one); the run is labelled by the
        mode, the target and its size."""
        if isinstance(self.spec, PaperPreset):
            return replace(self, spec=PaperPreset(mode, positions), max_prompts=max_prompts)
        intervention = Intervention(mode, self.spec.sets, positions, params,
                                    label=run_label(mode, self.target, self.n_neurons))
        return replace(self, spec=intervention, max_prompts=max_prompts)

    def argv(self, cache_path: Path) -> list[str]:
        args = [str(cache_path), *self.spec.to_argv()]
        args.append("--progress-json")
        if self.max_prompts is not None:
            args += ["--max-prompts", str(self.max_prompts)]
        return args + list(self.extra)


def run_label(mode: str, target: str, n_neurons: int) -> str:
    return f"{mode} {target} ({n_neurons:,})"


def target_request(target: str, sets: list[str], n_neurons: int, mode: str = modes.DEFAULT_MODE,
                   cleanup: tuple[Path, ...] = ()) -> PatchRequest:
    """A request to patch ``sets`` (what ``target`` names) with ``mode`` at every position, its defaults."""
    intervention = Intervention(mode, tuple(sets), label=run_label(mode, target, n_neurons))
    return PatchRequest(target, n_neurons, intervention, cleanup=cleanup)


def paper_request() -> PatchRequest:
    """The papers' comparison (`patch --preset paper`): seven runs, one job, one progress bar."""
    return PatchRequest("the papers' comparison", 0, PaperPreset())


@dataclass
class PatchJob:
    """One launched run and what is known about it so far."""

    number: int
    request: PatchRequest
    state: str = "starting"  # starting | running | done | failed | cancelled
    stage: str = ""
    done: int = 0
    total: int = 0
    eta: float | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when it finished: "done in" stops there
    run_ids: list[str] = field(default_factory=list)
    run_labels: list[str] = field(default_factory=list)  # the stored runs' names, as the Runs screen shows them
    error: str = ""
    process: subprocess.Popen | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def status(self) -> str:
        if self.state == "done":
            took = format_seconds((self.ended or time.monotonic()) - self.started)
            return f"done in {took} · stored {', '.join(self.run_labels) or 'no run'}"
        if self.state == "failed":
            return f"failed: {self.error}"
        if self.state == "cancelled":
            return "cancelled: nothing was stored"
        eta = "" if self.eta is None else f" · eta {format_seconds(self.eta)}"
        count = f" · {WORK_UNITS} {self.done:,}/{self.total:,}" if self.total else ""
        return f"{self.stage or self.state}{count}{eta}"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def write_selection(neurons, folder: Path | None = None) -> Path:
    """Write (layer, index) pairs to a temporary JSON file for `--set file:PATH`."""
    handle, name = tempfile.mkstemp(prefix="neuron-explorer-selection-", suffix=".json", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump([[int(layer), int(index)] for layer, index in neurons], stream)
    return Path(name)


class SubprocessRunner:
    """Runs a job's `patch` command and turns its event lines into calls of `on_event(job, event)`."""

    def __init__(self, command: tuple[str, ...] = PATCH_COMMAND) -> None:
        self.command = tuple(command)

    def run(self, job: PatchJob, cache_path: Path, on_event: Callable[[PatchJob, Event], None]) -> None:
        """Blocking: call it from a thread worker."""
        argv = [*self.command, *job.request.argv(cache_path)]
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as stderr:
            try:
                job.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
            except OSError as error:
                on_event(job, Failed(f"could not start the run: {error}"))
                return
            assert job.process.stdout is not None
            failed = False
            for line in job.process.stdout:
                try:
                    event = from_json(line)
                except EventError:
                    continue  # a library printed something: not ours
                failed = failed or isinstance(event, Failed)
                on_event(job, event)
            code = job.process.wait()
            if job.state == "cancelled":
                on_event(job, Cancelled())
            elif code != 0 and not failed:
                stderr.seek(0)
                lines = [line.strip() for line in stderr.read().splitlines() if line.strip()]
                message = lines[-1] if lines else f"the run exited with code {code}"
                on_event(job, Failed(message.removeprefix("neuron-explorer: error: ")))
            elif code == 0 and job.state not in ("done", "failed"):
                on_event(job, Done())
        for path in job.request.cleanup:
            Path(path).unlink(missing_ok=True)

    @staticmethod
    def cancel(job: PatchJob) -> bool:
        """Terminate the job's process; True when there was one running."""
        if job.finished or job.process is None or job.process.poll() is not None:
            return False
        job.state, job.ended = "cancelled", time.monotonic()
        job.process.terminate()
        return True


def apply_event(job: PatchJob, event: Event) -> bool:
    """Update a job from one of its events; True when the event ended the job or confirmed its cancelling (the
    moment to tell the user and reload the runs)."""
    was_finished = job.finished
    if isinstance(event, Cancelled):
        return job.state == "cancelled"
    if job.state == "cancelled":
        return False
    if isinstance(event, Progress):
        job.state = "running"
        job.stage, job.done, job.total, job.eta = event.stage, event.done, event.total, event.eta
    elif isinstance(event, Message):
        job.state, job.stage = "running", event.text
    elif isinstance(event, Stored):
        job.run_ids.append(event.name)
        job.run_labels.append(event.label or event.name)
    elif isinstance(event, Done):
        job.state = "done"
        job.done = job.total
    elif isinstance(event, Failed):
        job.state, job.error = "failed", event.message
    if job.finished and not was_finished:
        job.ended = time.monotonic()
        return True
    return False
