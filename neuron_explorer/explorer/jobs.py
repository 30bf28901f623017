"""Patch runs launched from the explorer: a request (what to patch, how), a job (its progress and outcome) and the
runner that executes it as a subprocess.

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
from dataclasses import dataclass, field
from pathlib import Path

from neuron_explorer.engine.patching import modes
from neuron_explorer.events import Cancelled, Done, Event, EventError, Failed, Message, Progress, Stored, from_json

PATCH_COMMAND = (sys.executable, "-m", "neuron_explorer", "patch")
PRESET_POSITIONS = "authors"  # the preset's own choice per row (ablation everywhere, patching at the newest position)
# What a patch job's progress counts: every evaluation (base, DPO, each run) generates for its toxicity prompts,
# scores its perplexity windows and generates for its F1 passages (engine/measure/evaluation.py).
WORK_UNITS = "prompts+windows+passages"
PAPER_ROWS = "ablate the top-128 toxic neurons; patch each ↓ group alone; patch all four; the tuning-free edit"


@dataclass
class PatchRequest:
    """What the patch dialog asks for; `argv` turns it into the `patch` command's options."""

    target: str  # how the run label names what was chosen: "TP↓", "cluster 3", "toxic top-128", "marked neurons"
    sets: list[str]
    n_neurons: int
    mode: str = modes.DEFAULT_MODE
    positions: str = "all"
    params: dict[str, float] = field(default_factory=dict)  # the mode's parameters given; the rest are its defaults
    max_prompts: int | None = None  # None: the command's default
    label: str | None = None
    cleanup: list[Path] = field(default_factory=list)  # temporary files to delete when the job ends
    extra: list[str] = field(default_factory=list)  # further `patch` options (evaluation sizes, devices)
    preset: str | None = None  # "paper": `patch --preset paper`, the papers' rows as one job (mode: its patch rows')

    def name(self) -> str:
        if self.label:
            return self.label
        if self.preset:
            return f"{self.target} ({self.mode} for the group rows)"
        return f"{self.mode} {self.target} ({self.n_neurons:,})"

    def argv(self, cache_path: Path) -> list[str]:
        args = [str(cache_path)]
        if self.preset:
            args += ["--preset", self.preset, "--mode", self.mode]
            if self.positions != PRESET_POSITIONS:
                args += ["--positions", self.positions]
        else:
            for spec in self.sets:
                args += ["--set", spec]
            args += ["--mode", self.mode, "--positions", self.positions, "--label", self.name()]
            for name, value in modes.get(self.mode).values(self.params).items():
                if value is not None:  # None: the command measures it
                    args += [f"--{name}", repr(value)]
        args.append("--progress-json")
        if self.max_prompts is not None:
            args += ["--max-prompts", str(self.max_prompts)]
        return args + list(self.extra)


def paper_request() -> PatchRequest:
    """The papers' comparison (`patch --preset paper`): seven runs, one job, one progress bar."""
    return PatchRequest("the papers' comparison", [], 0, mode=modes.PRESET_PATCH_MODES[0],
                        positions=PRESET_POSITIONS, preset="paper")


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
