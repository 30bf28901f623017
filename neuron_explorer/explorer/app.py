"""The explorer app: screens as modes (overview, neurons, clusters, runs, lab), one Store they all share.

The actions live in `actions.py`, the patch runs in `job_manager.py`, the prompt lab's worker in `lab_manager.py`.
State reaches the screens through the app's reactive counters below, which the screens watch; the app never calls
into a screen.

`run_explorer` opens (validates) the cache before the app starts, so a bad file is one line on stderr and
exit code 2, never a traceback inside a half-drawn terminal.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import get_current_worker

from neuron_explorer.cache.reader import neuron_id
from neuron_explorer.engine.defaults import default_cache_path
from neuron_explorer.errors import UserError

from .actions import ExplorerActions
from .commands import ExplorerCommands
from .job_manager import JobManager
from .jobs import PATCH_COMMAND, PatchJob, PatchRequest, paper_request, target_request, write_selection
from .lab_client import LAB_COMMAND, LabClient
from .lab_manager import LabManager
from .messages import JobEvent
from .screens.beyond import BeyondScreen
from .screens.build import BUILD_COMMAND, BuildScreen
from .screens.clusters import ClustersScreen
from .screens.dialogs import ConfirmDialog, ShowsWorkerErrors
from .screens.help import HelpScreen
from .screens.lab import LabScreen
from .screens.neurons import NeuronsScreen
from .screens.overview import OverviewScreen
from .screens.patch import PatchDialog
from .screens.runs import RunsScreen
from .state import Store
from .targets import find_target
from .widgets.footer import SCREEN_KEYS


class ExplorerApp(ShowsWorkerErrors, ExplorerActions, JobManager, LabManager, App):
    """Open with a Store, or with ``build_target`` (the default cache's path) to build it first."""

    CSS_PATH = "app.tcss"
    TITLE = "neuron-explorer"
    COMMANDS = App.COMMANDS | {ExplorerCommands}
    BINDINGS = [
        Binding(
            "1",
            "switch_mode('overview')",
            "overview",
            id="app.overview",
            group=SCREEN_KEYS,
            tooltip="the overview screen",
        ),
        Binding(
            "2",
            "switch_mode('neurons')",
            "neurons",
            id="app.neurons",
            group=SCREEN_KEYS,
            tooltip="layers and the neuron table",
        ),
        Binding(
            "3",
            "switch_mode('clusters')",
            "clusters",
            id="app.clusters",
            group=SCREEN_KEYS,
            tooltip="dendrogram and clusters",
        ),
        Binding(
            "4",
            "switch_mode('runs')",
            "runs",
            id="app.runs",
            group=SCREEN_KEYS,
            tooltip="patching runs beside base and DPO",
        ),
        Binding(
            "5",
            "switch_mode('lab')",
            "lab",
            id="app.lab",
            group=SCREEN_KEYS,
            tooltip="the prompt lab: one prompt through base, DPO and a patched model",
        ),
        Binding(
            "6",
            "switch_mode('beyond')",
            "beyond",
            show=False,
            id="app.beyond",
            tooltip="beyond the paper: neuron sets against chance, where the pair differs on any text",
        ),
        Binding("escape", "back", "back", show=False, id="app.back", tooltip="go back (to the overview)"),
        Binding("question_mark,f1", "help", "help", id="app.help", tooltip="this help (F1 also where ? types)"),
        Binding("slash", "jump", "jump", show=False, id="app.jump", tooltip="jump to a neuron such as L12/N345"),
        Binding("q", "quit", "quit", id="app.quit", tooltip="quit (asks first while a patch run is running)"),
    ]
    STORE_MODES: ClassVar[dict[str, Callable[[Store], Screen]]] = {
        "overview": OverviewScreen,
        "neurons": NeuronsScreen,
        "clusters": ClustersScreen,
        "runs": RunsScreen,
        "lab": LabScreen,
        "beyond": BeyondScreen,
    }

    # What the screens watch. `view_row` is set on every change of the Store's view (always_update: the same row
    # twice still redraws); its value is the row the neuron table's cursor goes to (None: the top).
    view_row: reactive[int | None] = reactive(None, always_update=True, init=False)
    marks_version: reactive[int] = reactive(0, init=False)  # neurons were marked or unmarked
    runs_version: reactive[int] = reactive(0, init=False)  # a run was stored beside the cache
    jobs_version: reactive[int] = reactive(0, init=False)  # a patch job made progress, ended or is cancelling
    lab_version: reactive[int] = reactive(0, init=False)  # the lab's worker or one of its tries changed
    lab_prompt: reactive[str] = reactive("", always_update=True, init=False)  # a prompt was chosen for the lab

    def __init__(
        self,
        store: Store | None = None,
        build_target: Path | None = None,
        build_command: tuple[str, ...] = BUILD_COMMAND,
        patch_command: tuple[str, ...] = PATCH_COMMAND,
        lab_command: tuple[str, ...] = LAB_COMMAND,
    ) -> None:
        super().__init__()
        self.store = store
        self.build_target, self.build_command = build_target, build_command
        self.patch_command = tuple(patch_command)
        self.lab = LabClient(tuple(lab_command))  # started when the lab screen is first shown
        self.jobs: list[PatchJob] = []  # patch runs launched in this session, oldest first
        self.first_screen_ready_at: float | None = None  # perf_counter when the overview was first drawn
        self._overview_drawn = threading.Event()  # the neuron frame is read once it is set

    # -- starting ----------------------------------------------------------------------------------------------
    def on_mount(self) -> None:
        if self.store is not None:
            self._show_store()
        elif self.build_target is not None:
            self.push_screen(BuildScreen(self.build_target, self.build_command))

    def open_cache(self, path: Path) -> None:
        """Called when the default cache has been built: open it and show the overview."""
        try:
            self.store = Store.open(path)
        except UserError as error:
            self.notify(str(error), severity="error", timeout=30)
            return
        self._show_store()

    def _show_store(self) -> None:
        assert self.store is not None
        self.sub_title = self.store.path.name
        for mode, screen in self.STORE_MODES.items():
            self.add_mode(mode, partial(screen, self.store))
        self.switch_mode("overview")
        self.load_neurons()

    def mark_first_screen(self) -> None:
        """The overview has been drawn once (the benchmark's "first screen ready"): the neurons may be read now."""
        if self.first_screen_ready_at is None:
            self.first_screen_ready_at = time.perf_counter()
        self._overview_drawn.set()

    @work(thread=True, exclusive=True, group="load", exit_on_error=False, description="reading the neurons")
    def load_neurons(self) -> None:
        """Every layer's neurons, read once in a thread while the overview is already on screen.

        The worker starts with the app but reads only once the overview has been drawn (or after a few seconds):
        h5py holds the GIL while it reads and inflates, and on a 70B-sized cache (2.29 M neurons, ~0.8 s of
        reading) that held the first paint up by ~400 ms."""
        assert self.store is not None
        self._overview_drawn.wait(timeout=5.0)
        if get_current_worker().is_cancelled:
            return
        self.store.load_neurons()
        self.call_from_thread(self._neurons_loaded)

    def _neurons_loaded(self) -> None:
        # The app's ~120,000 objects are all in place now: freeze them, so that the collector's full passes (60-100 ms
        # each over them, which landed at random on sorts and layer switches) go over the objects made since.
        gc.freeze()
        self.view_row = None

    def on_unmount(self) -> None:
        gc.unfreeze()  # back to the collector with them when the app ends (tests run many apps in one process)
        self._overview_drawn.set()  # a load still waiting for the overview ends now
        self.stop_every_job()
        self.lab.stop()

    def on_job_event(self, message: JobEvent) -> None:
        """An event of one of the app's child processes: the lab's model worker, or a patch run (a worker stopped
        since is neither, and `patch_job_event` drops its events)."""
        if message.process is self.lab.process:
            self.lab_event(message)
        else:
            self.patch_job_event(message)

    def check_action(self, action: str, parameters) -> bool | None:
        if action in ("switch_mode", "help", "back", "jump") and self.store is None:
            return False
        return True

    async def action_quit(self) -> None:
        """Quit; while a patch run is running, ask first (quitting stops it, and a stopped run stores nothing)."""
        running = [job for job in self.jobs if not job.finished]
        if not running:
            self.exit()
            return
        names = ", ".join(job.request.name() for job in running)
        self.push_screen(
            ConfirmDialog(
                f"Quit and stop {len(running)} running patch "
                f"run{'' if len(running) == 1 else 's'} ({names})? Nothing of "
                f"{'it' if len(running) == 1 else 'them'} is stored."
            ),
            lambda yes: self.exit() if yes else None,
        )

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity="information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every message as plain text, never markup: messages quote labels, prompts, set names, paths and errors,
        and a "[/INST]" in one crashed the screen. (Widget.notify passes markup=True, so it is not taken.)"""
        options = {} if timeout is None else {"timeout": timeout}
        super().notify(message, title=title, severity=severity, markup=False, **options)

    # -- navigation ----------------------------------------------------------------------------------------------
    # (Textual's `App.action_back` is async; Textual runs either kind, and the lab screen calls this one directly)
    def action_back(self) -> None:  # type: ignore[override]
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.current_mode != "overview":
            self.switch_mode("overview")

    def action_help(self) -> None:
        screen = self.screen
        sections = [(type(screen).__name__.removesuffix("Screen"), _declared(type(screen)))]
        if self.focused is not None:
            sections.append((type(self.focused).__name__, _declared(type(self.focused))))
        sections.append(("everywhere", _declared(type(self)) + [Binding("ctrl+p", "", "command palette")]))
        self.push_screen(HelpScreen(sections))

    # -- patch runs ----------------------------------------------------------------------------------------------
    def patch_request(self, source: str, inline: bool = False) -> PatchRequest:
        """What ``source`` ("selection", or a target's key: "group TP↓", "toxic:128", "groups:↓", "cluster 3",
        "set NAME") means as a patch request; ``inline`` gives the marked neurons as an ``ids:`` spec rather than a
        temporary file (for the lab's long-lived worker)."""
        store = self.opened_store
        if source == "selection":
            if not store.marked:
                raise UserError("no neurons are marked: mark some with space in the neuron table first")
            marked = sorted(store.marked)
            if inline:
                return target_request(
                    "marked neurons", ["ids:" + ",".join(neuron_id(*pair) for pair in marked)], len(marked)
                )
            path = write_selection(marked)
            return target_request("marked neurons", [f"file:{path}"], len(marked), cleanup=(path,))
        target = find_target(source)
        if target is None:
            raise UserError(f"cannot patch '{source}'")
        return target_request(target.short, [target.spec], len(store.set_neurons(target.spec)), target.mode)

    def action_patch(self, source: str) -> None:
        """Open the patch dialog for ``source``; when it is answered, launch the run in the background."""
        try:
            request = self.patch_request(source)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self._ask_and_launch(request, source)

    def action_patch_preset(self) -> None:
        """The papers' comparison (`patch --preset paper`) as one background job: the dialog asks how many prompts
        and how the group rows patch."""
        self._ask_and_launch(paper_request())

    def _ask_and_launch(self, request: PatchRequest, source: str | None = None) -> None:
        def launch(answer: PatchRequest | None) -> None:
            if answer:
                self.start_patch(answer)

        self.push_screen(PatchDialog(request, source=source), launch)


def _declared(owner: type) -> list[Binding]:
    """The bindings a class of this package declares itself (Textual's inherited ones would drown them)."""
    if not owner.__module__.startswith("neuron_explorer"):
        return []
    return [binding for binding in vars(owner).get("BINDINGS", []) if isinstance(binding, Binding)]


def use_ordinary_pages() -> None:
    """Keep numpy from asking for transparent huge pages, unless NUMPY_MADVISE_HUGEPAGE says otherwise.

    numpy asks the kernel for huge pages for every array of 4 MB or more; where the kernel then compacts memory on the
    spot to find them (THP defrag "madvise", a page cache full of a big cache file), each fresh 18 MB array of a
    70B-sized view cost 40-160 ms instead of ~10, and the explorer makes such arrays on every sort. A process-wide
    setting, so it is made where the explorer's process starts, not when a module that tests or scripts import loads.
    """
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    if (
        multiarray is not None
        and "NUMPY_MADVISE_HUGEPAGE" not in os.environ
        and hasattr(multiarray, "_set_madvise_hugepage")
    ):
        multiarray._set_madvise_hugepage(False)


def run_explorer(path: str | Path | None) -> int:
    """Open ``path`` (or the default cache, building it first when missing) in the explorer; return an exit code."""
    use_ordinary_pages()
    if path is not None:
        app = ExplorerApp(Store.open(path))  # a bad file raises UserError here, before the terminal is taken
    else:
        target = Path(default_cache_path())
        app = ExplorerApp(Store.open(target)) if target.exists() else ExplorerApp(build_target=target)
    try:
        app.run()
    finally:
        if app.store is not None:
            app.store.reader.close()
    return app.return_code or 0
