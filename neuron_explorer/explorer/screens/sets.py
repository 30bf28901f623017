"""Neuron sets against chance: a matrix of the groups, toxic:128, auroc:128, the top Δ and the saved sets.

Above the diagonal the Jaccard index of two sets and how many times the chance level it is; below it their overlap
beside the chance overlap; on the diagonal each set's size. Chance keeps each set's count per layer and places its
neurons at random within the layer (`engine/patching/overlap.py`). Bold green: p < 0.01 that random sets overlap
as much.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from neuron_explorer.cache import annotations
from neuron_explorer.engine.patching.overlap import compare_all, default_specs, resolve_masks
from neuron_explorer.errors import UserError

from ..state import Store

SCREEN_DRAWS = 500  # the command's 2000 would add nothing visible to two decimals
SIGNIFICANT = 0.01
LEGEND = ("above the diagonal: Jaccard ×(its chance level); below: overlap / chance overlap; diagonal: size. "
          "Chance: each set's neurons placed at random within their layers. Bold green: p < 0.01. "
          "r recomputes (with sets saved since).")


def short_name(spec: str) -> str:
    return spec.removeprefix("group:").replace("top:128:contribution", "topΔ:128")


def overlap_matrix(results: list, specs: list[str]) -> Table:
    """The comparisons of `overlap.compare_all` for `specs` as one square table."""
    by_pair = {(r.a, r.b): r for r in results}
    table = Table(box=None, padding=(0, 1), collapse_padding=True)
    table.add_column("", style="bold", no_wrap=True)
    for spec in specs:
        table.add_column(short_name(spec), justify="right")
    for i, row_spec in enumerate(specs):
        cells = []
        for j, column_spec in enumerate(specs):
            if i == j:
                size = next((r.size_a if r.a == row_spec else r.size_b) for r in results if row_spec in (r.a, r.b))
                cells.append(Text(f"|{size:,}|", style="dim"))
                continue
            result = by_pair.get((row_spec, column_spec)) or by_pair[(column_spec, row_spec)]
            style = "bold green" if result.p_value < SIGNIFICANT else ""
            if i < j:
                ratio = result.jaccard / result.chance_jaccard if result.chance_jaccard > 0 else float("nan")
                ratio_text = "" if ratio != ratio else f"×{ratio:.1f}"
                cells.append(Text(f"{result.jaccard:.2f}".removeprefix("0") + ratio_text, style=style))
            else:
                cells.append(Text(f"{result.overlap:,}/{result.chance_overlap:.1f}", style=style))
        table.add_row(short_name(row_spec), *cells)
    return table


class SetsScreen(Screen):
    """Do different selection rules pick the same neurons, beyond what their layers alone would give?"""

    CSS_PATH = "sets.tcss"
    BINDINGS = [Binding("r", "recompute", "recompute", id="sets.recompute",
                        tooltip="compare again, with the sets saved since")]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="sets-body"):
            yield Static(id="sets-matrix")
            yield Static(Text(LEGEND, style="dim"), id="sets-legend")
        yield Footer()

    def on_mount(self) -> None:
        self.action_recompute()

    def action_recompute(self) -> None:
        reader = self.store.reader
        specs = default_specs(reader) + [f"set:{saved.name}" for saved in annotations.list_sets(reader.path)]
        try:
            results = compare_all(resolve_masks(reader, specs), draws=SCREEN_DRAWS)
        except UserError as error:
            self.query_one("#sets-matrix", Static).update(Text(str(error), style="red"))
            return
        self.query_one("#sets-matrix", Static).update(overlap_matrix(results, specs))
