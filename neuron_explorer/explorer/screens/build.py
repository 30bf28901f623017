"""Shown when the default cache does not exist yet: runs `neuron-explorer build --progress-json` and follows its job
events (the same typed events as patch runs, `neuron_explorer.events`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, ProgressBar, Static

from neuron_explorer.events import Done, Event, EventError, Failed, Message, Progress, from_json

from ..messages import BuildFinished
from .dialogs import ShowsWorkerErrors

BUILD_COMMAND = (sys.executable, "-m", "neuron_explorer", "build", "--progress-json")


class BuildScreen(ShowsWorkerErrors, Screen):
    """Builds the default cache in a subprocess; the app opens it when the build succeeds."""

    CSS_PATH = "build.tcss"
    BINDINGS = [Binding("q", "app.quit", "quit", id="build.quit", tooltip="stop the build and quit")]

    def __init__(self, target: Path, command: tuple[str, ...] = BUILD_COMMAND) -> None:
        super().__init__()
        self.target, self.command = target, command
        self.process: subprocess.Popen | None = None
        self.error: str | None = None  # the build's own last word when it failed

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"No cache at {self.target}: building it now with `{' '.join(self.command[1:])}`.",
                     id="build-title")
        yield Static("starting…", id="build-stage")
        yield ProgressBar(total=None, show_eta=False, id="build-progress")
        yield Log(id="build-log", highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.run_build()

    @work(thread=True, exclusive=True, group="build", exit_on_error=False, description="the build")
    def run_build(self) -> None:
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, bufsize=1)
        except OSError as error:
            self.app.call_from_thread(self.show, Failed(f"could not start the build: {error}"))
            self.post_message(BuildFinished(127))
            return
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = from_json(line)
            except EventError:  # a library's own output: shown as it is (its latest state, if it redraws)
                event = Message(line.rstrip("\n").split("\r")[-1])
            self.app.call_from_thread(self.show, event)
        self.post_message(BuildFinished(self.process.wait()))

    def show(self, event: Event) -> None:
        log = self.query_one(Log)
        if isinstance(event, Progress):
            self.query_one("#build-stage", Static).update(f"{event.stage}: {event.done:,}/{event.total:,}")
            self.query_one(ProgressBar).update(total=event.total or None, progress=event.done)
        elif isinstance(event, Message):
            log.write_lines(event.text.splitlines() or [""])
        elif isinstance(event, Done):
            log.write_lines(event.summary.splitlines())
        elif isinstance(event, Failed):
            self.error = event.message
            log.write_line(f"error: {event.message}")

    def on_build_finished(self, message: BuildFinished) -> None:
        progress = self.query_one(ProgressBar)
        if message.returncode == 0 and self.target.exists():
            progress.update(total=1, progress=1)
            self.app.open_cache(self.target)
        else:
            progress.display = False
            reason = f": {self.error}" if self.error else "; its output is below"
            self.query_one("#build-title", Static).update(
                f"The build failed (exit code {message.returncode}){reason}. Press q to quit.")

    def on_unmount(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
