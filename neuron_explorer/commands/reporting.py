"""How the CLI shows a job's events: rich progress bars on stderr (stdout stays clean for results), or one JSON line
per event on stdout with --progress-json (for the explorer)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from neuron_explorer.events import Done, Event, Failed, Message, Progress, Reporter, to_json

if TYPE_CHECKING:
    from rich.progress import Progress as Bars
    from rich.progress import TaskID

console = Console(stderr=True)


@contextmanager
def reporting(json_lines: bool) -> Iterator[Reporter]:
    """A reporter for the whole command; with `json_lines`, a failure leaves as a `Failed` event before it is raised."""
    if not json_lines:
        with _Bars() as bars:
            yield bars.show
        return
    try:
        yield _print_json
    except Exception as error:
        from neuron_explorer.errors import UserError

        _print_json(Failed(str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"))
        raise


def _print_json(event: Event) -> None:
    sys.stdout.write(to_json(event) + "\n")
    sys.stdout.flush()


class _Bars:
    """One bar per count: a `Progress` whose count went back, or that follows a finished bar, starts a new bar;
    otherwise it moves the current one (its stage becomes the description). Messages print above the bars, and
    `Done`'s summary on stdout once the bars are closed. The bars start with the first `Progress`, so that a
    command that fails before its work begins writes nothing but its error."""

    def __init__(self) -> None:
        self.bars: Bars | None = None
        self.task: TaskID | None = None
        self.last: Progress | None = None
        self.summary = ""

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.__exit__(*exc)
        if self.summary:
            print(self.summary)

    def show(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._move(event)
        elif isinstance(event, Message):
            console.print(event.text, markup=False, highlight=False)
        elif isinstance(event, Done):
            self.summary = event.summary

    def _move(self, event: Progress) -> None:
        if self.bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichBars

            self.bars = RichBars(
                TextColumn("{task.description:<40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self.bars.__enter__()
        bars = self.bars
        last = self.last
        if last is None or event.done < last.done or (last.total and last.done >= last.total):
            self.task = bars.add_task("", total=None)
        if self.task is None:  # the first event (last is None) always added one
            raise RuntimeError("progress bars have no current task")
        bars.update(self.task, total=event.total or None, completed=event.done, description=escape(event.stage[:40]))
        self.last = event
