"""The explorer's own Textual messages, in one place.

Widgets and screens post them; they bubble up to the screen or the app that acts on them. The app never calls into a
screen: what changed reaches the screens through the app's reactive counters (`ExplorerApp.view_row`,
`marks_version`, `runs_version`, `jobs_version`, `lab_version`, `lab_prompt`), which each screen watches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from textual.message import Message

if TYPE_CHECKING:
    from neuron_explorer.events import Event

    from .job_process import JobProcess


class NeuronChosen(Message):
    """Enter on a neuron in the table: the screen opens its detail."""

    def __init__(self, layer: int, index: int) -> None:
        super().__init__()
        self.layer, self.index = layer, index


class SortRequested(Message):
    """`s` in the neuron table: sort the view by the cursor's column (the app sorts, as the palette's "sort:" does)."""

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column


class MarksChanged(Message):
    """A neuron was marked or unmarked (in the table or on the detail screen); the app tells every screen."""


class DetailLoaded(Message):
    """The detail screen's worker has read one neuron's record, tokens, per-prompt activations and the stored runs
    that patched it, and its Δ at each step of a checkpoint series (None without one)."""

    def __init__(
        self,
        record: dict,
        tokens: pl.DataFrame,
        prompts: pl.DataFrame,
        runs: list,
        dynamics: tuple[list[str], np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.record, self.tokens, self.prompts, self.runs = record, tokens, prompts, runs
        self.dynamics = dynamics


class JobEvent(Message):
    """A child process's job event (`explorer.job_process`); `final` marks its one terminal event, posted once it
    has exited. The one message for every child: patch runs, the build, the lab's model worker. It goes only to
    where its process posts it (the app, or the build screen)."""

    bubble = False

    def __init__(self, process: JobProcess, event: Event, final: bool = False) -> None:
        super().__init__()
        self.process, self.event, self.final = process, event, final
