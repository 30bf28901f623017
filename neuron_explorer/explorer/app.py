"""The explorer app: screens as modes (overview, neurons, clusters, runs), one Store they all share.

`run_explorer` opens (validates) the cache before the app starts, so a bad file is one line on stderr and
exit code 2, never a traceback inside a half-drawn terminal.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding

from neuron_explorer.errors import UserError

from .commands import ExplorerCommands
from .screens.build import BUILD_COMMAND, BuildScreen
from .screens.clusters import ClustersScreen
from .screens.detail import DetailScreen
from .screens.dialogs import FilterDialog, PromptDialog
from .screens.help import HelpScreen
from .screens.neurons import NeuronsScreen
from .jobs import PATCH_COMMAND, PatchJob, PatchRequest, SubprocessRunner, apply_event, write_selection
from .screens.overview import OverviewScreen
from .screens.patch import PatchDialog
from .screens.runs import RunsScreen
from .state import Filters, Store

MODES_WITH_STORE = ("overview", "neurons", "clusters", "runs")


class ExplorerApp(App):
    """Open with a Store, or with ``build_target`` (the default cache's path) to build it first."""

    CSS_PATH = "app.tcss"
    TITLE = "neuron-explorer"
    COMMANDS = App.COMMANDS | {ExplorerCommands}
    BINDINGS = [
        Binding("1", "switch_mode('overview')", "overview", id="app.overview", tooltip="the overview screen"),
        Binding("2", "switch_mode('neurons')", "neurons", id="app.neurons", tooltip="layers and the neuron table"),
        Binding("3", "switch_mode('clusters')", "clusters", id="app.clusters", tooltip="dendrogram and clusters"),
        Binding("4", "switch_mode('runs')", "runs", id="app.runs", tooltip="patching runs beside base and DPO"),
        Binding("escape", "back", "back", show=False, id="app.back", tooltip="go back (to the overview)"),
        Binding("question_mark", "help", "help", id="app.help", tooltip="this help"),
        Binding("q", "quit", "quit", id="app.quit", tooltip="quit"),
    ]

    def __init__(self, store: Store | None = None, build_target: Path | None = None,
                 build_command: tuple[str, ...] = BUILD_COMMAND,
                 patch_command: tuple[str, ...] = PATCH_COMMAND) -> None:
        super().__init__()
        self.store = store
        self.build_target, self.build_command = build_target, build_command
        self.runner = SubprocessRunner(patch_command)
        self.jobs: list[PatchJob] = []  # patch runs launched in this session, oldest first
        self.first_screen_ready_at: float | None = None  # perf_counter when the overview was first drawn

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
        for mode, screen in (("overview", OverviewScreen), ("neurons", NeuronsScreen),
                             ("clusters", ClustersScreen), ("runs", RunsScreen)):
            self.add_mode(mode, lambda screen=screen: screen(self.store))
        self.switch_mode("overview")
        self.load_neurons()

    def mark_first_screen(self) -> None:
        """The overview has been drawn once (the benchmark's "first screen ready")."""
        if self.first_screen_ready_at is None:
            self.first_screen_ready_at = time.perf_counter()

    @work(thread=True, exclusive=True, group="load")
    def load_neurons(self) -> None:
        """Every layer's neurons, read once in a thread while the overview is already on screen."""
        assert self.store is not None
        self.store.load_neurons()
        self.call_from_thread(self._redraw_neurons)

    def check_action(self, action: str, parameters) -> bool | None:
        if action in ("switch_mode", "help", "back") and self.store is None:
            return False
        return True

    # -- changing the view (the palette, the screens and the tests call these) ----------------------------------
    def _redraw_neurons(self, row: int | None = None) -> None:
        """Redraw the neuron screen from the Store (now, or when it mounts), putting the cursor on ``row``."""
        try:
            screen = self.get_screen_stack("neurons")[0]
        except (KeyError, IndexError):
            return
        screen.pending_row = row
        if screen.is_mounted:
            screen.refresh_view()

    def _redraw_marks(self) -> None:
        try:
            screen = self.get_screen_stack("neurons")[0]
        except (KeyError, IndexError):
            return
        if screen.is_mounted and self.store.loaded:
            screen.refresh_marks()

    def _view_changed(self, row: int | None = None) -> None:
        if self.current_mode != "neurons":
            self.switch_mode("neurons")
        elif isinstance(self.screen, DetailScreen):
            self.pop_screen()
        self._redraw_neurons(row)

    def set_layer(self, layer: int | None) -> None:
        self.store.set_layer(layer)
        self._view_changed()

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        self.store.sort_by(column, descending)
        self._view_changed()

    def set_filters(self, filters: Filters) -> None:
        self.store.set_filters(filters)
        self._view_changed()

    def show_cluster(self, cluster: int) -> None:
        self.store.show_cluster(cluster)
        self._view_changed()

    def jump_to(self, text: str) -> None:
        try:
            row = self.store.jump(text)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self._view_changed(row)

    def show_neuron(self, layer: int, index: int) -> None:
        self.push_screen(DetailScreen(self.store, layer, index))

    def mark_set(self, name: str) -> None:
        from neuron_explorer.cache.annotations import load_set

        try:
            neuron_set = load_set(self.store.path, name)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self.store.marked.update(neuron_set.neurons)
        self.notify(f"marked the {len(neuron_set.neurons):,} neurons of set '{name}'")
        self._redraw_marks()

    # -- actions -------------------------------------------------------------------------------------------------
    def action_back(self) -> None:
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

    def action_filter(self) -> None:
        self.push_screen(FilterDialog(self.store.view.filters),
                         lambda filters: filters is not None and self.set_filters(filters))

    def action_jump(self) -> None:
        self.push_screen(PromptDialog("Jump to neuron", placeholder="L12/N345"),
                         lambda text: text and self.jump_to(text))

    def action_clear_marks(self) -> None:
        self.store.clear_marks()
        self._redraw_marks()

    def action_save_set(self, source: str) -> None:
        """Ask for a name, then save ``source`` (selection, view, group X, cluster N) as a neuron set."""
        suggestion = {"selection": "selection", "view": "view"}.get(source, source.replace(" ", "-"))

        def save(name: str | None) -> None:
            if not name:
                return
            try:
                neuron_set = self.store.save_set(name, source)
            except UserError as error:
                self.notify(str(error), severity="error")
                return
            self.notify(f"saved set '{neuron_set.name}' ({len(neuron_set.neurons):,} neurons)")

        self.push_screen(PromptDialog(f"Save {source} as a neuron set named", value=suggestion), save)

    def action_export(self, extension: str) -> None:
        def export(path: str | None) -> None:
            if not path:
                return
            try:
                written = self.store.export(path)
            except (UserError, OSError) as error:
                self.notify(str(error), severity="error")
                return
            self.notify(f"wrote {self.store.row_count:,} rows to {written}")

        self.push_screen(PromptDialog("Export the current table to", value=self.store.default_export_name(extension)),
                         export)

    # -- patch runs ----------------------------------------------------------------------------------------------
    def patch_request(self, source: str) -> PatchRequest:
        """What ``source`` ("selection", "group TP↓", "cluster 3", "set NAME") means as a patch target."""
        from neuron_explorer.cache.annotations import load_set
        from neuron_explorer.cache.schema import GROUP_NAMES

        store = self.store
        if source == "selection":
            if not store.marked:
                raise UserError("no neurons are marked: mark some with space in the neuron table first")
            path = write_selection(sorted(store.marked))
            return PatchRequest(f"selection of {len(store.marked)}", [f"file:{path}"], len(store.marked),
                                cleanup=[path])
        if source.startswith("group "):
            group = source.removeprefix("group ")
            if group not in GROUP_NAMES:
                raise UserError(f"no group '{group}': groups are {', '.join(GROUP_NAMES)}")
            count = len(store.group_neurons(group)) if store.loaded else 0
            return PatchRequest(source, [f"group:{group}"], count)
        if source.startswith("cluster "):
            cluster = int(source.removeprefix("cluster "))
            count = len(store.cluster_neurons(cluster)) if store.loaded else 0
            return PatchRequest(source, [f"cluster:{cluster}"], count)
        if source.startswith("set "):
            name = source.removeprefix("set ")
            return PatchRequest(f"set {name}", [f"set:{name}"], len(load_set(store.path, name).neurons))
        raise UserError(f"cannot patch '{source}'")

    def action_patch(self, source: str) -> None:
        """Open the patch dialog for ``source``; when it is answered, launch the run in the background."""
        try:
            request = self.patch_request(source)
        except UserError as error:
            self.notify(str(error), severity="error")
            return

        def launch(answer: PatchRequest | None) -> None:
            if answer is None:
                for path in request.cleanup:
                    path.unlink(missing_ok=True)
                return
            self.start_patch(answer)

        self.push_screen(PatchDialog(request), launch)

    def start_patch(self, request: PatchRequest) -> PatchJob:
        job = PatchJob(number=len(self.jobs) + 1, request=request)
        self.jobs.append(job)
        self.run_patch_job(job)
        self.notify(f"run {job.number} started: {request.name()} (4: runs screen, c there cancels)")
        self._refresh_jobs()
        return job

    @work(thread=True, group="patch", exit_on_error=False, description="patch run")
    def run_patch_job(self, job: PatchJob) -> None:
        """Runs in a thread: the subprocess does the work; each JSON event comes back to the app's thread."""
        self.runner.run(job, self.store.path, lambda job, event: self.call_from_thread(self._job_event, job, event))

    def _job_event(self, job: PatchJob, event: dict) -> None:
        was_finished = job.finished
        apply_event(job, event)
        if job.finished and not was_finished or event.get("event") == "cancelled":
            if job.state == "done":
                self.notify(f"run {job.number} finished: {job.request.name()}")
                self._reload_runs()
            elif job.state == "failed":
                self.notify(f"run {job.number} failed: {job.error}", severity="error", timeout=20)
            elif job.state == "cancelled":
                self.notify(f"run {job.number} cancelled; nothing was stored", severity="warning")
        self._refresh_jobs()

    def _runs_screen(self):
        try:
            screen = self.get_screen_stack("runs")[0]
        except (KeyError, IndexError):
            return None
        return screen if screen.is_mounted else None

    def _refresh_jobs(self) -> None:
        screen = self._runs_screen()
        if screen is not None:
            screen.refresh_jobs()

    def _reload_runs(self) -> None:
        screen = self._runs_screen()
        if screen is not None:
            screen.reload()

    def on_unmount(self) -> None:
        for job in self.jobs:  # leaving the app stops its runs; nothing half-written is kept
            self.runner.cancel(job)

    def action_cancel_patch(self) -> None:
        """Cancel the newest running job."""
        for job in reversed(self.jobs):
            if self.runner.cancel(job):
                self.notify(f"cancelling run {job.number}…", severity="warning")
                self._refresh_jobs()
                return
        self.notify("no patch run is running")


def _declared(owner: type) -> list[Binding]:
    """The bindings a class of this package declares itself (Textual's inherited ones would drown them)."""
    if not owner.__module__.startswith("neuron_explorer"):
        return []
    return [binding for binding in vars(owner).get("BINDINGS", []) if isinstance(binding, Binding)]


def run_explorer(path: str | Path | None) -> int:
    """Open ``path`` (or the default cache, building it first when missing) in the explorer; return an exit code."""
    if path is not None:
        app = ExplorerApp(Store.open(path))  # a bad file raises UserError here, before the terminal is taken
    else:
        try:
            from neuron_explorer.engine.defaults import default_cache_path
        except ImportError:
            raise UserError("no default cache is configured in this installation: "
                            "pass a cache file, `neuron-explorer FILE.h5`") from None
        target = Path(default_cache_path())
        app = ExplorerApp(Store.open(target)) if target.exists() else ExplorerApp(build_target=target)
    try:
        app.run()
    finally:
        if app.store is not None:
            app.store.reader.close()
    return app.return_code or 0
