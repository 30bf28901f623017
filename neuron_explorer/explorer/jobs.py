"""Patch runs launched from the explorer: a request (an intervention, or the papers' preset, and the job's own
extras) and a job (its progress and outcome).

The app never runs a model itself: a job's `JobProcess` runs `python -m neuron_explorer patch FILE ...
--progress-json` and posts its job events (`neuron_explorer.events`: progress with done/total/ETA, messages, each
stored run, then exactly one of done, failed or cancelled); `apply_event` is where they change the job.
Cancelling terminates the subprocess; since the run record is written (atomically) only when a run has finished, a
cancelled or failed job leaves nothing half-written, and the cache file is never written.
Tests swap the command for a quick fake job.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from neuron_explorer.engine.patching import modes
from neuron_explorer.events import Done, Event, Failed, Message, Progress, Stored
from neuron_explorer.spec.intervention import Intervention, PaperPreset, Positions

from .job_process import TERMINAL, JobProcess, JobState

PATCH_COMMAND = (sys.executable, "-m", "neuron_explorer", "patch")
# What a patch job's progress counts: every evaluation (base, DPO, each run) generates for its toxicity prompts,
# scores its perplexity windows and generates for its F1 passages (engine/measure/evaluation.py).
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
        intervention = Intervention(
            mode, self.spec.sets, positions, params, label=run_label(mode, self.target, self.n_neurons)
        )
        return replace(self, spec=intervention, max_prompts=max_prompts)

    def argv(self, cache_path: Path) -> list[str]:
        args = [str(cache_path), *self.spec.to_argv()]
        args.append("--progress-json")
        if self.max_prompts is not None:
            args += ["--max-prompts", str(self.max_prompts)]
        return args + list(self.extra)


def run_label(mode: str, target: str, n_neurons: int) -> str:
    return f"{mode} {target} ({n_neurons:,})"


def target_request(
    target: str, sets: list[str], n_neurons: int, mode: str = modes.DEFAULT_MODE, cleanup: tuple[Path, ...] = ()
) -> PatchRequest:
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
    state: JobState = JobState.QUEUED
    stage: str = ""
    done: int = 0
    total: int = 0
    eta: float | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when it finished: "done in" stops there
    run_ids: list[str] = field(default_factory=list)
    run_labels: list[str] = field(default_factory=list)  # the stored runs' names, as the Runs screen shows them
    error: str = ""
    process: JobProcess | None = None

    @property
    def finished(self) -> bool:
        return self.state.finished

    def status(self) -> str:
        if self.state == JobState.DONE:
            took = format_seconds((self.ended or time.monotonic()) - self.started)
            return f"done in {took} · stored {', '.join(self.run_labels) or 'no run'}"
        if self.state == JobState.FAILED:
            return f"failed: {self.error}"
        if self.state == JobState.CANCELLED:
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


def apply_event(job: PatchJob, event: Event) -> bool:
    """Update a job from one of its events; True when the event ended it (the moment to tell the user and reload
    the runs). Its process posts exactly one terminal event, last."""
    if isinstance(event, Progress):
        job.state = JobState.RUNNING
        job.stage, job.done, job.total, job.eta = event.stage, event.done, event.total, event.eta
    elif isinstance(event, Message):
        job.state, job.stage = JobState.RUNNING, event.text
    elif isinstance(event, Stored):
        job.run_ids.append(event.name)
        job.run_labels.append(event.label or event.name)
    elif isinstance(event, TERMINAL):
        job.state, job.ended = JobState.ended_by(event), time.monotonic()
        if isinstance(event, Done):
            job.done = job.total
        elif isinstance(event, Failed):
            job.error = event.message
        return True
    return False
