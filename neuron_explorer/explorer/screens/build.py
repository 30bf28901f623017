"""Shown when the default cache does not exist yet: runs `neuron-explorer build --progress-json` as a `JobProcess`
and follows its job events (the same typed events as patch runs, `neuron_explorer.events`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from textual import getters, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Header, Log, ProgressBar, Static

from neuron_explorer.events import Cancelled, Done, Event, Failed, Message, Progress

from ..job_process import JobProcess, JobState
from ..messages import JobEvent
from ..widgets.footer import KeyFooter
from .dialogs import ShowsWorkerErrors

if TYPE_CHECKING:
    from ..app import ExplorerApp

BUILD_COMMAND = (sys.executable, "-m", "neuron_explorer", "build", "--progress-json")


class BuildScreen(ShowsWorkerErrors, Screen):
    """Builds the default cache in a subprocess; the app opens it when the build succeeds."""

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "build.tcss"
    BINDINGS = [Binding("q", "app.quit", "quit", id="build.quit", tooltip="stop the build and quit")]

    def __init__(self, target: Path, command: tuple[str, ...] = BUILD_COMMAND) -> None:
        super().__init__()
        self.target, self.command = target, command
        self.process = JobProcess(command, self.post_message, what="the build")
        self.job_state = JobState.QUEUED

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            f"No cache at {self.target}: building it now with `{' '.join(self.command[1:])}`.", id="build-title"
        )
        yield Static("starting…", id="build-stage")
        yield ProgressBar(total=None, show_eta=False, id="build-progress")
        yield Log(id="build-log", highlight=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        if self.process.start():
            self.job_state = JobState.RUNNING
        self.follow_build()

    @work(thread=True, exclusive=True, group="build", exit_on_error=False, description="the build")
    def follow_build(self) -> None:
        self.process.follow()

    def on_job_event(self, message: JobEvent) -> None:
        event, log = message.event, self.query_one(Log)
        if isinstance(event, Progress):
            self.query_one("#build-stage", Static).update(f"{event.stage}: {event.done:,}/{event.total:,}")
            self.query_one(ProgressBar).update(total=event.total or None, progress=event.done)
        elif isinstance(event, Message):
            log.write_lines(event.text.splitlines() or [""])
        elif isinstance(event, Done):
            log.write_lines(event.summary.splitlines())
        if message.final:
            self.finish(event, message.process.returncode)

    def finish(self, event: Event, returncode: int | None) -> None:
        """The build ended: open what it wrote, or say why not (its last output lines go in the log)."""
        self.job_state = JobState.ended_by(event)
        progress = self.query_one(ProgressBar)
        if self.job_state == JobState.DONE and self.target.exists():
            progress.update(total=1, progress=1)
            self.app.open_cache(self.target)
            return
        progress.display = False
        if isinstance(event, Failed):
            reason = event.message
        elif isinstance(event, Cancelled):
            reason = "it was stopped"
        else:
            reason = f"it said it was done but wrote no {self.target.name}"
        self.query_one(Log).write_lines([*self.process.tail, f"error: {reason}"])
        self.query_one("#build-title", Static).update(
            f"The build failed (exit code {returncode}): {reason}. Press q to quit."
        )

    def on_unmount(self) -> None:
        self.process.cancel()
