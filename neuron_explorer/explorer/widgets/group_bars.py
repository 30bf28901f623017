"""The eight neuron groups as horizontal share bars: the four that reduce toxicity and their four mirrors."""

from __future__ import annotations

import polars as pl
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..formatting import bar, signed

REDUCING_STYLE = "green"
MIRROR_STYLE = "red"
# The two group definitions of the summary table (METHOD §3): its columns, and what the screen says of each.
DEFINITIONS = {
    "v1": (
        ("count", "sum_contribution", "share_v1"),
        "v1 (the default, as the filter and patches count): groups by the sign of δ, every neuron; share of "
        "the 4 ↓ (↑) groups' Σ Δ. v: v3",
    ),
    "v3": (
        ("count_v3", "sum_contribution_v3", "share_v3"),
        "v3: only Δ > 0 (↑ rows: Δ < 0), by sign class; share of Σ+Δ (↑: of Σ−Δ). v: back to v1",
    ),
}


class GroupBars(Static):
    """Per group, by one definition (v1 by default; `definition` switches to v3): count, Σ Δ and the share bar,
    with the definition written under the table."""

    DEFAULT_CSS = "GroupBars { height: auto; }"

    def __init__(self, groups: pl.DataFrame, **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = groups
        self.definition = "v1"

    def show(self, definition: str) -> None:
        self.definition = definition
        self.update(self._render_groups())

    def on_mount(self) -> None:
        self.update(self._render_groups())

    def on_resize(self) -> None:
        self.update(self._render_groups())

    def _render_groups(self) -> Group:
        return Group(self._table(), Text(DEFINITIONS[self.definition][1], style="dim"))

    def _table(self) -> Table:
        (count, total, share_column), _ = DEFINITIONS[self.definition]
        bar_width = max(6, self.size.width - 30) if self.size.width else 12
        table = Table.grid(padding=(0, 1))
        for justify in ("left", "right", "right", "left", "right"):
            table.add_column(justify=justify, no_wrap=True)
        table.add_row(*(Text(title, style="bold") for title in ("group", "n", "Σ Δ", f"{self.definition} share", "")))
        for row in self.groups.iter_rows(named=True):
            style = REDUCING_STYLE if row["reducing"] else MIRROR_STYLE
            share = float(row[share_column])
            table.add_row(
                Text(row["group"], style=f"bold {style}"),
                f"{row[count]:,}",
                signed(row[total]),
                Text(bar(share, bar_width), style=style),
                f"{share:4.0%}",
            )
        return table
