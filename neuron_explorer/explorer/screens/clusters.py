"""The dendrogram of the top-|Δ| neurons and the cluster list; enter shows a cluster's neurons in the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from neuron_explorer.cache import layout
from neuron_explorer.cache.schema import GROUP_NAMES

from ..formatting import signed
from ..state import Store, is_reducing
from ..widgets.footer import KeyFooter
from ..widgets.plots import Dendrogram

if TYPE_CHECKING:
    from ..app import ExplorerApp


def group_mix(row: dict) -> Text:
    """The cluster's members per group, largest first, e.g. ``AN↓7 TP↑5``."""
    counts = sorted(((row.get(f"n_{name}", 0), name) for name in GROUP_NAMES), reverse=True)
    mix = Text()
    for count, name in counts:
        if count:
            mix.append(f"{name}{count} ", style="green" if is_reducing(name) else "red")
    return mix


class ClustersScreen(Screen):
    """Clusters of the neurons with the largest |Δ| (hierarchical, on their per-prompt activation shifts)."""

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "clusters.tcss"
    BINDINGS = [
        Binding("enter", "show_cluster", "show neurons", id="clusters.show", tooltip="show its neurons in the table"),
        Binding("S", "save_cluster", "save set", id="clusters.save", tooltip="save the cluster as a named set"),
        Binding(
            "p",
            "patch_cluster",
            "patch",
            show=False,
            id="clusters.patch",
            tooltip="patch the cluster in a background run",
        ),
        Binding("d", "toggle_dendrogram", "dendrogram", id="clusters.dendrogram", tooltip="show or hide the tree"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield Header()
        reader = self.store.reader
        tree = reader.cluster_tree()
        if tree is None or not reader.has(layout.CLUSTER_SUMMARY):
            yield Static(
                "This cache holds no clusters: it was computed without the clustering step.", classes="empty-state"
            )
        else:
            yield Dendrogram(tree, id="dendrogram")
            yield DataTable(id="cluster-table", cursor_type="row", zebra_stripes=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        if not self.query("#cluster-table"):
            return
        table = self.query_one("#cluster-table", DataTable)
        table.add_column("cl", key="cluster")
        table.add_column("size", key="size")
        table.add_column("Σ Δ", key="sum")
        table.add_column("layers", key="layers")
        table.add_column("group mix", key="mix")
        for row in self.store.reader.clusters().iter_rows(named=True):
            value = row["sum_contribution"]
            table.add_row(
                Text(str(row["cluster"]), justify="right"),
                Text(str(row["size"]), justify="right"),
                Text(signed(value), style="green" if value > 0 else "red"),
                str(row["layers"]),
                group_mix(row),
                key=str(row["cluster"]),
            )
        table.focus()

    def selected_cluster(self) -> int | None:
        table = self.query("#cluster-table")
        if not table or not table.first(DataTable).row_count:
            return None
        data_table = table.first(DataTable)
        key = data_table.coordinate_to_cell_key(data_table.cursor_coordinate).row_key.value
        assert key is not None  # every row is added with its cluster as its key
        return int(key)

    @on(DataTable.RowSelected, "#cluster-table")
    def action_show_cluster(self) -> None:
        cluster = self.selected_cluster()
        if cluster is not None:
            self.app.show_cluster(cluster)

    def action_save_cluster(self) -> None:
        cluster = self.selected_cluster()
        if cluster is not None:
            self.app.action_save_set(f"cluster {cluster}")

    def action_patch_cluster(self) -> None:
        cluster = self.selected_cluster()
        if cluster is not None:
            self.app.action_patch(f"cluster {cluster}")

    def action_toggle_dendrogram(self) -> None:
        for dendrogram in self.query(Dendrogram):
            dendrogram.display = not dendrogram.display
