"""Job events: what a long job (a patch run, the build, compute) reports while it works, defined once.

The engine reports through a `Reporter`, a callable that takes one event. The CLI renders the events with rich
progress bars on stderr, or with --progress-json as one JSON object per line on stdout
(`neuron_explorer.commands.reporting`); the explorer reads those lines back with `from_json`. Torch-free, so that the
explorer can import it.

Reading a line: `from_json` raises `EventError` (a `ValueError` that quotes the line) for anything that is not one of
these events: not JSON, not an object, an unknown "event" or missing or unknown fields. It never guesses; a reader
decides what such a line means (the explorer's `JobProcess` skips it, keeping the last few for a failure's message:
libraries print too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Progress:
    """`done` of `total` work units; `eta` is None until there is a rate to extrapolate from."""

    stage: str
    done: int
    total: int
    elapsed: float = 0.0
    eta: float | None = None


@dataclass(frozen=True)
class Message:
    text: str
    level: str = "info"  # info | warning


@dataclass(frozen=True)
class Stored:
    """Something the job wrote and will not take back, e.g. a run record (kind "run", name = its run id)."""

    kind: str
    name: str
    path: str = ""
    label: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """The job finished; `summary` is its closing text (what the human CLI prints on stdout)."""

    summary: str = ""


@dataclass(frozen=True)
class Failed:
    """The job (or, from the lab's worker, the request `request`) failed; `message` says why in one line."""

    message: str
    request: int | None = None


@dataclass(frozen=True)
class Cancelled:
    """The job was stopped by its user: the explorer's `JobProcess` says so for a job; the lab's model worker says so
    for a request it was asked to cancel."""


@dataclass(frozen=True)
class Ready:
    """A long-lived worker (the prompt lab's) has loaded what it needs and takes requests."""

    text: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Answer:
    """A worker's answer to request `request` (for the lab: `engine.lab.protocol.RESULT_FIELDS`)."""

    request: int
    result: dict[str, Any] = field(default_factory=dict)


Event = Progress | Message | Stored | Done | Failed | Cancelled | Ready | Answer
Reporter = Callable[[Event], None]
EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__.lower(): cls for cls in (Progress, Message, Stored, Done, Failed, Cancelled, Ready, Answer)
}


class EventError(ValueError):
    """A line that is not a job event."""


def to_json(event: Event) -> str:
    """One line: {"event": "progress", "stage": ..., ...}; non-ASCII text stays readable."""
    return json.dumps({"event": type(event).__name__.lower(), **asdict(event)}, ensure_ascii=False, default=str)


def json_object(line: str, what: str, error: type[Exception], shown: str) -> dict[str, Any]:
    """The JSON object one protocol line holds (events here, lab requests), or `error` saying it is not `what`."""
    try:
        payload = json.loads(line)
    except json.JSONDecodeError:
        raise error(f"not {what} (not JSON): {shown!r}") from None
    if not isinstance(payload, dict):
        raise error(f"not {what} (not a JSON object): {shown!r}")
    return payload


def from_json(line: str) -> Event:
    """The event a `to_json` line describes; `EventError` for anything else."""
    shown = line.strip()[:200]
    payload = json_object(line, "a job event", EventError, shown)
    kind = payload.pop("event", None)
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventError(f"not a job event (unknown event {kind!r}; known: {', '.join(EVENT_TYPES)}): {shown!r}")
    names = {f.name for f in fields(cls)}
    if set(payload) - names:
        raise EventError(f"not a {kind} event (unknown fields {', '.join(sorted(set(payload) - names))}): {shown!r}")
    try:
        return cls(**payload)
    except TypeError as error:
        raise EventError(f"not a {kind} event ({error}): {shown!r}") from None


def ignore(event: Event) -> None:
    """The reporter of a job nobody watches."""


class Tracker:
    """Counts work units towards a total that may grow (`plan`) and reports `Progress` with elapsed time and ETA."""

    def __init__(self, report: Reporter, stage: str = "", total: int = 0) -> None:
        self.report, self.stage, self.total, self.done = report, stage, total, 0
        self.started = time.perf_counter()
        if total:
            self._report()

    def plan(self, units: int) -> None:
        self.total += units
        self._report()

    def advance(self, units: int = 1, stage: str | None = None) -> None:
        self.done += units
        if stage:
            self.stage = stage
        self._report()

    def _report(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        eta = (self.total - self.done) / rate if rate else None
        self.report(
            Progress(self.stage, self.done, self.total, round(elapsed, 1), None if eta is None else round(eta, 1))
        )
