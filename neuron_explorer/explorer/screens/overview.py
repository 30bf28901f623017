"""The first screen: what the file is (provenance), the totals, the group shares and Σ Δ per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual import getters
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Header, Static

from ..formatting import short_text, signed
from ..state import Store
from ..widgets.footer import KeyFooter
from ..widgets.group_bars import GroupBars
from ..widgets.plots import LayerContributionPlot, StepGroupPlot, group_legend

if TYPE_CHECKING:
    from ..app import ExplorerApp


def describe_model(entry) -> str:
    if isinstance(entry, dict):
        return str(entry.get("id") or entry.get("spec") or entry)
    return str(entry)


def provenance_table(store: Store) -> Table:
    """Model pair, probe, prompts and settings, one field each (a long value wraps)."""
    info = store.info
    provenance = info.provenance
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True, min_width=8)
    table.add_column(overflow="fold")  # long values wrap: nothing is cut at 80 columns
    table.add_row(
        "file",
        f"{info.path.name} · {info.architecture} · {info.n_layers}×{info.d_mlp:,} = "
        f"{info.n_neurons:,} neurons · {info.n_prompts:,} prompts · {info.created[:10]}",
    )
    table.add_row(
        "models", f"{describe_model(provenance.get('base', '?'))} → {describe_model(provenance.get('tuned', '?'))}"
    )
    probe = provenance.get("probe", {})
    if isinstance(probe, dict):
        probe_text = " ".join(f"{key} {short_text(value, 12)}" for key, value in probe.items())
    else:
        probe_text = str(probe)
    table.add_row("probe", probe_text)
    prompts = provenance.get("prompts", {})
    table.add_row(
        "prompts",
        " ".join(f"{key} {value}" for key, value in prompts.items()) if isinstance(prompts, dict) else str(prompts),
    )
    settings = provenance.get("settings", {})
    table.add_row(
        "settings",
        " ".join(f"{key}={value}" for key, value in settings.items()) if isinstance(settings, dict) else str(settings),
    )
    return table


def totals_text(store: Store) -> Text:
    summary = store.reader.summary()
    text = Text()
    text.append("Σ+Δ ", style="bold").append(signed(summary.get("sum_positive_contribution", 0.0)), style="green")
    text.append("   net Δ ", style="bold").append(signed(summary.get("net_contribution", 0.0)))
    if "top_toxic_share" in summary:
        text.append(f"   v2 top-{summary.get('top_toxic_k', '')} by cos, ā_pre>0, δ>0: ", style="bold")
        text.append(f"{summary['top_toxic_share']:.0%} of Σ+Δ")
    if "net_activation_term" in summary:  # absent from caches written before the split
        text.append("\nnet Δ = firing δ·p_pre ", style="bold").append(signed(summary["net_activation_term"]))
        text.append(" + writing ā_dpo·(p_pre−p_dpo) ", style="bold").append(signed(summary["net_weight_term"]))
    return text


class OverviewScreen(Screen):
    """Overview: the file's provenance, the totals, the group share bars and the per-layer plot (and, for a cache
    with a checkpoint series, the reducing groups' Σ Δ per step)."""

    CSS_PATH = "overview.tcss"
    BINDINGS = [
        Binding(
            "v",
            "definition",
            "v1/v3 groups",
            show=False,
            id="overview.definition",
            tooltip="switch the group shares between v1 (the default) and v3",
        )
    ]

    if TYPE_CHECKING:
        app = getters.app(ExplorerApp)

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        reader = self.store.reader
        yield Header()
        yield Static(provenance_table(self.store), id="provenance")
        yield Static(totals_text(self.store), id="totals")
        with Horizontal(id="overview-body"):
            with Vertical(id="groups-pane"):
                yield Static("Group shares (v1)", classes="pane-title", id="groups-title")
                yield GroupBars(reader.group_summary(), id="group-bars")
            with Vertical(id="layers-pane"):
                yield Static("Σ Δ per layer, by v1 group", classes="pane-title")
                yield LayerContributionPlot(reader.layer_group_sums(), id="layer-plot")
                yield Static(group_legend(), id="legend")
                dynamics = reader.dynamics()
                if dynamics is not None:  # a checkpoint series (compute --tuned A --tuned B …)
                    yield Static(
                        f"Σ Δ per step, reducing groups ({len(dynamics['steps'])} steps, final last)",
                        classes="pane-title",
                        id="dynamics-title",
                    )
                    yield StepGroupPlot(dynamics, id="dynamics-plot")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.call_after_refresh(self.app.mark_first_screen)

    def action_definition(self) -> None:
        bars = self.query_one(GroupBars)
        definition = "v3" if bars.definition == "v1" else "v1"
        bars.show(definition)
        self.query_one("#groups-title", Static).update(f"Group shares ({definition})")
