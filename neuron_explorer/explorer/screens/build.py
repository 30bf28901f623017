"""Shown when the default cache does not exist yet: runs `neuron-explorer build` and streams its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, ProgressBar, Static

BUILD_COMMAND = (sys.executable, "-m", "neuron_explorer", "build")


class BuildFinished(Message):
    def __init__(self, returncode: int) -> None:
        super().__init__()
        self.returncode = returncode


class BuildScreen(Screen):
    """Builds the default cache in a subprocess; the app opens it when the build succeeds."""

    CSS_PATH = "build.tcss"
    BINDINGS = [Binding("q", "app.quit", "quit", id="build.quit", tooltip="stop the build and quit")]

    def __init__(self, target: Path, command: tuple[str, ...] = BUILD_COMMAND) -> None:
        super().__init__()
        self.target, self.command = target, command
        self.process: subprocess.Popen | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"No cache at {self.target}: building it now with `{' '.join(self.command[1:])}`.",
                     id="build-title")
        yield ProgressBar(total=None, show_eta=False, id="build-progress")
        yield Log(id="build-log", highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.run_build()

    @work(thread=True, exclusive=True, group="build")
    def run_build(self) -> None:
        log = self.query_one(Log)
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, bufsize=1)
        except OSError as error:
            self.app.call_from_thread(log.write_line, f"could not start the build: {error}")
            self.post_message(BuildFinished(127))
            return
        assert self.process.stdout is not None
        for line in self.process.stdout:
            # progress bars redraw with carriage returns: show only the latest state of each line
            self.app.call_from_thread(log.write_line, line.rstrip("\n").split("\r")[-1])
        self.post_message(BuildFinished(self.process.wait()))

    def on_build_finished(self, message: BuildFinished) -> None:
        progress = self.query_one(ProgressBar)
        if message.returncode == 0 and self.target.exists():
            progress.update(total=1, progress=1)
            self.app.open_cache(self.target)
        else:
            progress.display = False
            self.query_one("#build-title", Static).update(
                f"The build failed (exit code {message.returncode}); its output is below. Press q to quit.")

    def on_unmount(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
