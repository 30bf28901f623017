"""Patch runs launched from the explorer: a request (what to patch, how) and a job (its progress and outcome).

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
from dataclasses import dataclass, field
from pathlib import Path

from neuron_explorer.engine.patching import modes
from neuron_explorer.events import Done, Event, Failed, Message, Progress, Stored

from .job_process import TERMINAL, JobProcess, JobState

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
