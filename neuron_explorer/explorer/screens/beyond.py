"""Beyond the paper (docs/beyond.md): neuron sets against chance, and where the pair differs on any text.

The matrix compares the groups, toxic:128, auroc:128, the top Δ and the saved sets: above the diagonal the Jaccard
index of two sets and how many times its chance level it is; below it their overlap beside the chance overlap; on
the diagonal each set's size. Chance keeps each set's count per layer and places its neurons at random within the
layer (`engine/patching/overlap.py`). Bold green: p < 0.01 that random sets overlap as much.

Below it, per text source of the cache (`differences/*`): the mean next-token KL(base ‖ tuned) and, per layer, the
mean residual difference tuned − base projected on the probe, its size against the residual's, and the tokens it
promotes and suppresses. Last, where the cache holds a checkpoint series (`dynamics`): each reducing group's Σ Δ
per step and, per layer, the step at which half the final movement was reached.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, Static

from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.cache.schema import DIFFERENCE_SOURCES, GROUP_NAMES, REDUCING_GROUPS
from neuron_explorer.engine.patching.overlap import compare_all, default_specs, resolve_masks
from neuron_explorer.errors import UserError

from ..formatting import signed
from ..state import Store
from ..widgets.footer import KeyFooter

DIFFERENCE_TOKENS = 4  # promoted and suppressed tokens shown per layer
SCREEN_DRAWS = 500  # the command's 2000 would add nothing visible to two decimals
SIGNIFICANT = 0.01
LEGEND = (
    "above the diagonal: Jaccard ×(its chance level); below: overlap / chance overlap; diagonal: size. "
    "Chance: each set's neurons placed at random within their layers. Bold green: p < 0.01. "
    "r recomputes (with sets saved since)."
)


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


def difference_table(found: dict, vocab) -> Table:
    """One source of `CacheReader.differences()`: a row per layer."""
    arrays = found["arrays"]
    table = Table(box=None, padding=(0, 1), collapse_padding=True)
    for title, width in (("layer", 5), ("Δh·ŵ", 9), ("‖Δh‖/‖h‖", 8)):
        table.add_column(title, justify="right", no_wrap=True, min_width=width)
    for title in ("promotes", "suppresses"):
        table.add_column(title, ratio=1)  # the token lists wrap in a narrow terminal, the numbers never

    def words(ids) -> str:
        return " ".join(repr(str(vocab[i]) if 0 <= i < len(vocab) else f"<{i}>")[1:-1] for i in ids[:DIFFERENCE_TOKENS])

    for layer, projection in enumerate(arrays["probe_projection"]):
        relative = arrays["difference_norm"][layer] / max(float(arrays["residual_norm"][layer]), 1e-30)
        table.add_row(
            str(layer),
            Text(f"{projection:+.2e}", style="green" if projection < 0 else "red"),
            f"{relative:.1e}",
            words(arrays["top_tokens"][layer]),
            words(arrays["bottom_tokens"][layer]),
        )
    return table


def dynamics_tables(found: dict) -> tuple[Table, Text]:
    """The reducing groups' Σ Δ per step (the final model's membership), and the half-movement step per layer."""
    table = Table(box=None, padding=(0, 1), collapse_padding=True)
    table.add_column("step", no_wrap=True)
    for name in REDUCING_GROUPS:
        table.add_column(name, justify="right", no_wrap=True)
    for step, sums in zip(found["steps"], found["group_sums"]):
        table.add_row(str(step)[-24:], *(signed(float(sums[GROUP_NAMES.index(name)])) for name in REDUCING_GROUPS))
    half = Text(
        "half of the final Σ|Δ| reached at step: "
        + " ".join(f"L{layer}:{'–' if step < 0 else step}" for layer, step in enumerate(found["half_step"].tolist()))
    )
    return table, half


class BeyondScreen(Screen):
    """Do different selection rules pick the same neurons beyond chance; how does the pair differ on any text?"""

    CSS_PATH = "beyond.tcss"
    BINDINGS = [
        Binding("r", "recompute", "recompute", id="sets.recompute", tooltip="compare again, with the sets saved since")
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="beyond-body"):
            yield Static("Neuron sets against layer-matched chance", classes="pane-title")
            yield Static(id="sets-matrix")
            yield Static(Text(LEGEND, style="dim"), id="sets-legend")
            differences = self.store.reader.differences()
            if not differences:
                yield Static(
                    "Where the pair differs on any text: not in this cache (computed without it).", classes="pane-title"
                )
            for source, found in differences.items():
                attrs = found["attrs"]
                yield Static(
                    f"Where the pair differs: {DIFFERENCE_SOURCES[source]} ({attrs['n_texts']} texts, "
                    f"{attrs['n_tokens']:,} tokens; mean KL(base ‖ tuned) {attrs['kl_mean']:.2e} nats, max "
                    f"{attrs['kl_max']:.2e})",
                    classes="pane-title",
                )
                yield Static(difference_table(found, self.store.reader.vocab()), classes="difference-table")
            dynamics = self.store.reader.dynamics()
            if dynamics is not None:
                table, half = dynamics_tables(dynamics)
                yield Static(
                    f"Across training: {len(dynamics['steps'])} steps, Σ Δ of the reducing groups "
                    f"(the final model's members)",
                    classes="pane-title",
                )
                yield Static(table, classes="difference-table")
                yield Static(half, classes="difference-table")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.action_recompute()

    def action_recompute(self) -> None:
        reader = self.store.reader
        specs = default_specs(reader) + [f"set:{saved.name}" for saved in sidecar.list_sets(reader.path)]
        try:
            results = compare_all(resolve_masks(reader, specs), draws=SCREEN_DRAWS)
        except UserError as error:
            self.query_one("#sets-matrix", Static).update(Text(str(error), style="red"))
            return
        self.query_one("#sets-matrix", Static).update(overlap_matrix(results, specs))
