"""Layers on the left, the neuron table on the right: choose a layer (or all), sort, filter, mark, jump."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import getters, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Header, OptionList, Static
from textual.widgets.option_list import Option

from ..formatting import signed
from ..messages import NeuronChosen
from ..state import COLUMNS, Filters, Store
from ..widgets.footer import KeyFooter
from ..widgets.neuron_table import NeuronTable

if TYPE_CHECKING:
    from ..app import ExplorerApp

ALL_LAYERS = "all"


class NeuronsScreen(Screen):
    """The neuron table over the Store's view, with the layer list that chooses what the view covers; it redraws
    when the app's `view_row` or `marks_version` change."""

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "neurons.tcss"
    BINDINGS = [
        Binding("f", "filter", "filter", id="neurons.filter", tooltip="filter by group, cluster, sign, threshold"),
        Binding("x", "clear_filters", "clear", show=False, id="neurons.clear_filters", tooltip="clear every filter"),
        Binding("plus", "sign('+')", "Δ>0", show=False, id="neurons.positive", tooltip="keep only Δ > 0"),
        Binding("minus", "sign('-')", "Δ<0", show=False, id="neurons.negative", tooltip="keep only Δ < 0"),
        Binding(
            "S",
            "save_selection",
            "save set",
            show=False,
            id="neurons.save_selection",
            tooltip="save the marked neurons as a named set",
        ),
        Binding(
            "W",
            "save_view",
            "save view",
            show=False,
            id="neurons.save_view",
            tooltip="save the filtered view as a named set",
        ),
        Binding("u", "clear_marks", "unmark all", show=False, id="neurons.clear_marks"),
        Binding(
            "p",
            "patch",
            "patch",
            show=False,
            id="neurons.patch",
            tooltip="patch the marked neurons in a background run",
        ),
        Binding(
            "e", "export", "export", show=False, id="neurons.export", tooltip="export the table to .csv or .parquet"
        ),
        Binding("tab", "switch_pane", "layers/table", show=False, id="neurons.switch_pane"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.layer_sums = store.reader.layers()  # read once: it sums a whole array, too slow for every redraw
        self.totals = store.reader.summary()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="layers-pane"):
                yield Static("Layers  Σ Δ", classes="pane-title")
                yield OptionList(*self._layer_options(), id="layer-list")
            with Vertical(id="table-pane"):
                yield Static(id="view-status")
                yield NeuronTable(self.store, id="neuron-table")
                yield Static(id="column-about")
                yield Static(id="layer-status")
        yield KeyFooter()

    def _layer_options(self) -> list[Option]:
        layers = self.layer_sums
        options = [Option(Text.assemble(("all layers", "bold")), id=ALL_LAYERS)]
        for row in layers.iter_rows(named=True):
            value = row["sum_contribution"]
            label = Text.assemble(f"L{row['layer']:<3}", (signed(value), "green" if value > 0 else "red"))
            options.append(Option(label, id=str(row["layer"])))
        return options

    def on_mount(self) -> None:
        self.query_one(NeuronTable).focus()
        self.watch(self.app, "view_row", self.refresh_view, init=False)
        self.watch(self.app, "marks_version", self.refresh_marks, init=False)
        self.watch(self.query_one(NeuronTable), "cursor_column", self.show_column_about)
        self.refresh_view(self.app.view_row)

    def show_column_about(self, column: int) -> None:
        """The legend line: what the column under the cursor holds (h/l move it; ? has the glossary)."""
        chosen = COLUMNS[column]
        self.query_one("#column-about", Static).update(Text(f"{chosen.label}: {chosen.about}"), layout=False)

    def refresh_view(self, row: int | None = None) -> None:
        """The view changed (loaded, layer, sort, filter, jump): redraw the table and the status lines, the cursor
        on ``row``."""
        table = self.query_one(NeuronTable)
        layer_list = self.query_one("#layer-list", OptionList)
        layer = self.store.view.layer
        layer_list.highlighted = 0 if layer is None else layer + 1
        if not self.store.loaded:
            self.query_one("#view-status", Static).update("reading every layer's neurons…")
            return
        table.reload()
        if row is not None:
            table.move_to(row)
        self.update_status()

    def update_status(self) -> None:
        text = self.store.describe_view()
        if self.store.marked:
            text += f" · {len(self.store.marked):,} marked"
        # both status lines are one row high (neurons.tcss): no layout pass over the whole screen
        self.query_one("#view-status", Static).update(text, layout=False)
        layer = self.store.view.layer
        if layer is None:
            summary = self.totals
            detail = (
                f"Σ+Δ {signed(summary.get('sum_positive_contribution', 0.0))}  "
                f"net {signed(summary.get('net_contribution', 0.0))}"
            )
        else:
            row = self.layer_sums.row(layer, named=True)
            detail = (
                f"L{layer}: ΣΔ {signed(row['sum_contribution'])}  Σ+ {signed(row['sum_positive'])}  "
                f"Σ− {signed(row['sum_negative'])}  fire {signed(row['sum_activation_term'])}  "
                f"write {signed(row['sum_weight_term'])}  resid {signed(row['residual_pre'])}"
            )
        self.query_one("#layer-status", Static).update(detail, layout=False)

    # -- events ----------------------------------------------------------------------------------------------
    @on(OptionList.OptionSelected, "#layer-list")
    def choose_layer(self, event: OptionList.OptionSelected) -> None:
        option_id = event.option.id
        assert option_id is not None  # every option is added with an id (its layer, or ALL_LAYERS)
        self.app.set_layer(None if option_id == ALL_LAYERS else int(option_id))
        self.query_one(NeuronTable).focus()

    @on(NeuronChosen)
    def open_detail(self, event: NeuronChosen) -> None:
        self.app.show_neuron(event.layer, event.index)

    def refresh_marks(self) -> None:
        if self.store.loaded:
            self.query_one(NeuronTable).refresh()
            self.update_status()

    # -- actions ---------------------------------------------------------------------------------------------
    def action_switch_pane(self) -> None:
        table = self.query_one(NeuronTable)
        (self.query_one("#layer-list") if table.has_focus else table).focus()

    def action_filter(self) -> None:
        self.app.action_filter()

    def action_clear_filters(self) -> None:
        self.app.set_filters(Filters())

    def action_sign(self, sign: str) -> None:
        current = self.store.view.filters
        self.app.set_filters(Filters(**{**current.__dict__, "sign": None if current.sign == sign else sign}))

    def action_save_selection(self) -> None:
        self.app.action_save_set("selection")

    def action_save_view(self) -> None:
        self.app.action_save_set("view")

    def action_clear_marks(self) -> None:
        self.app.action_clear_marks()

    def action_export(self) -> None:
        self.app.action_export("csv")

    def action_patch(self) -> None:
        """The marked neurons; with none marked, the group or cluster the table is filtered to."""
        filters = self.store.view.filters
        if self.store.marked:
            self.app.action_patch("selection")
        elif filters.group:
            self.app.action_patch(f"group {filters.group}")
        elif filters.cluster is not None:
            self.app.action_patch(f"cluster {filters.cluster}")
        else:
            self.app.notify(
                "mark neurons with space (or filter to a group or cluster) to patch them", severity="warning"
            )

    def check_action(self, action: str, parameters) -> bool | None:
        """Until every layer is read, the table's actions are shown disabled."""
        return True if self.store.loaded or action == "switch_pane" else None
