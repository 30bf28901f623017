"""Progress bars with ETA for long steps, on stderr so that stdout stays clean for results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield `task(description, total) -> advance(n)`; each task shows done/total, elapsed time and ETA."""
    bars = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)

    def task(description: str, total: int) -> Callable[[int], None]:
        task_id = bars.add_task(description, total=total)
        return lambda n=1: bars.advance(task_id, n)

    with bars:
        yield task
