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
DEFINITIONS = ("v3 (n, Σ Δ, bar): Δ > 0 by sign class (↑ rows: Δ < 0), share of Σ+Δ (↑: of Σ−Δ). "
               "v1: groups by the sign of δ, share of the 4 ↓ (↑) groups' Σ Δ.")


class GroupBars(Static):
    """Per group, by v3's definition (Δ > 0 by sign class; Δ < 0 on mirror rows): count, Σ Δ and the share bar (of
    Σ positive Δ for reducing groups, of Σ negative Δ for mirrors); then the v1 share (groups by the sign of δ, of
    the four reducing or the four mirror groups' Σ Δ), with the definitions written under the table."""

    DEFAULT_CSS = "GroupBars { height: auto; }"

    def __init__(self, groups: pl.DataFrame, **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    def on_mount(self) -> None:
        self.update(self._render_groups())

    def on_resize(self) -> None:
        self.update(self._render_groups())

    def _render_groups(self) -> Group:
        return Group(self._table(), Text(DEFINITIONS, style="dim"))

    def _table(self) -> Table:
        bar_width = max(6, self.size.width - 34) if self.size.width else 12
        table = Table.grid(padding=(0, 1))
        for justify in ("left", "right", "right", "left", "right", "right"):
            table.add_column(justify=justify, no_wrap=True)
        table.add_row(*(Text(title, style="bold") for title in ("group", "n", "Σ Δ", "v3 share", "", "v1")))
        for row in self.groups.iter_rows(named=True):
            style = REDUCING_STYLE if row["reducing"] else MIRROR_STYLE
            share = float(row["share_v3"])
            table.add_row(Text(row["group"], style=f"bold {style}"), f"{row['count_v3']:,}",
                          signed(row["sum_contribution_v3"]), Text(bar(share, bar_width), style=style), f"{share:4.0%}",
                          f"{row['share_v1']:4.0%}")
        return table
