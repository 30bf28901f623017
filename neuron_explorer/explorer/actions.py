"""What the user can do to the view and the neurons (the palette, the screens' keys and the tests call these).

Mixed into `ExplorerApp`. Each changes the Store, then sets the app's `view_row` (the view changed) or bumps its
`marks_version`; the screens watch those and redraw themselves.
"""

from __future__ import annotations

from textual import work
from textual.reactive import reactive

from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.errors import UserError

from .host import AppHost
from .messages import MarksChanged, SortRequested
from .screens.detail import DetailScreen
from .screens.dialogs import FilterDialog, PromptDialog
from .state import Filters


class ExplorerActions(AppHost):
    """Layer, sort, filter, jump, marks, neuron sets and export."""

    view_row: reactive[int | None]  # the app's counters (see `ExplorerApp`) that these set
    marks_version: reactive[int]

    def _view_changed(self, row: int | None = None) -> None:
        """Show the neuron screen (closing a detail on top of it) with the Store's new view, the cursor on ``row``."""
        if self.current_mode != "neurons":
            self.switch_mode("neurons")
        elif isinstance(self.screen, DetailScreen):
            self.pop_screen()
        self.view_row = row

    def set_layer(self, layer: int | None) -> None:
        self.opened_store.set_layer(layer)
        self._view_changed()

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        self.opened_store.sort_by(column, descending)
        self._view_changed()

    def on_sort_requested(self, message: SortRequested) -> None:
        self.sort_by(message.column)

    def set_filters(self, filters: Filters) -> None:
        self.opened_store.set_filters(filters)
        self._view_changed()

    def show_cluster(self, cluster: int) -> None:
        self.opened_store.show_cluster(cluster)
        self._view_changed()

    def jump_to(self, text: str) -> None:
        try:
            row = self.opened_store.jump(text)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self._view_changed(row)

    def show_neuron(self, layer: int, index: int) -> None:
        self.push_screen(DetailScreen(self.opened_store, layer, index))

    def action_filter(self) -> None:
        self.push_screen(
            FilterDialog(self.opened_store.view.filters),
            lambda filters: self.set_filters(filters) if filters is not None else None,
        )

    def action_jump(self) -> None:
        self.push_screen(
            PromptDialog("Jump to neuron", placeholder="L12/N345"), lambda text: self.jump_to(text) if text else None
        )

    def mark_set(self, name: str) -> None:
        """Mark every neuron of a saved set (the palette's "mark: set NAME")."""
        try:
            neuron_set = sidecar.load_set(self.opened_store.path, name)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self.opened_store.marked.update(neuron_set.neurons)
        self.notify(f"marked the {len(neuron_set.neurons):,} neurons of set '{name}'")
        self.marks_version += 1

    def on_marks_changed(self, _: MarksChanged) -> None:
        self.marks_version += 1

    def action_clear_marks(self) -> None:
        self.opened_store.clear_marks()
        self.marks_version += 1

    def action_save_set(self, source: str) -> None:
        """Ask for a name, then save ``source`` (selection, view, group X, cluster N) as a neuron set."""
        suggestion = {"selection": "selection", "view": "view"}.get(source, source.replace(" ", "-"))

        def save(name: str | None) -> None:
            if not name:
                return
            try:
                neuron_set = self.opened_store.save_set(name, source)
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
                written = self.opened_store.export(path)
            except (UserError, OSError) as error:
                self.notify(str(error), severity="error")
                return
            self.notify(f"wrote {self.opened_store.row_count:,} rows to {written}")

        self.push_screen(
            PromptDialog("Export the current table to", value=self.opened_store.default_export_name(extension)), export
        )

    def action_figures(self) -> None:
        """The papers' figures (`neuron-explorer figures`) beside the cache, drawn in a thread."""
        self.notify("drawing the figures…")
        self.draw_figures()

    @work(thread=True, exclusive=True, group="figures", exit_on_error=False, description="drawing the figures")
    def draw_figures(self) -> None:
        from neuron_explorer.figures import write_figures  # matplotlib: only when asked

        written = write_figures(self.opened_store.path)
        self.call_from_thread(
            self.notify, f"wrote {len(written) // 2} figures as SVG and PNG to {written[0].parent}", timeout=15
        )
