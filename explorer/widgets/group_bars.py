"""The eight neuron groups as horizontal share bars: the four that reduce toxicity and their four mirrors."""

from __future__ import annotations

import polars as pl
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..formatting import bar, signed

REDUCING_STYLE = "green"
MIRROR_STYLE = "red"


class GroupBars(Static):
    """Per group: count, Σ Δ and its v3 share (of all positive Δ for reducing groups, of all negative Δ for mirrors)."""

    DEFAULT_CSS = "GroupBars { height: auto; }"

    def __init__(self, groups: pl.DataFrame, **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    def on_mount(self) -> None:
        self.update(self._table())

    def on_resize(self) -> None:
        self.update(self._table())

    def _table(self) -> Table:
        bar_width = max(6, self.size.width - 33) if self.size.width else 12
        table = Table.grid(padding=(0, 1))
        for justify in ("left", "right", "right", "left", "right"):
            table.add_column(justify=justify, no_wrap=True)
        table.add_row(Text("group", style="bold"), Text("n", style="bold"), Text("Σ Δ", style="bold"),
                      Text("share", style="bold"), "")
        for row in self.groups.iter_rows(named=True):
            style = REDUCING_STYLE if row["reducing"] else MIRROR_STYLE
            share = float(row["share_v3"])
            table.add_row(Text(row["group"], style=f"bold {style}"), f"{row['count']:,}",
                          signed(row["sum_contribution"]), Text(bar(share, bar_width), style=style), f"{share:4.0%}")
        return table
