"""The recovered fraction of each stored patch run as one line of text: a bar from 0 (base) towards 1 (DPO) and
its ± one standard error whisker, so that the papers' comparison reads at a glance in any terminal."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import Static

from neuron_explorer.figures import RecoveredRow

from ..formatting import short_text

MIN_BAR = 36  # the bars keep at least this many cells; labels get the rest (longer ones end in …)
VALUE_WIDTH = 12  # " +42% ± 6.1%"
LIMITS = (-1.0, 2.0)  # the scale never goes beyond these; a value outside is drawn at the edge with an arrow
BAR_STYLE, WHISKER_STYLE, MARK_STYLE = "cyan", "bold yellow", "dim"


def scale(rows: list[RecoveredRow]) -> tuple[float, float]:
    """From min(0, lowest whisker) to max(1, highest whisker), within LIMITS."""
    ends = [0.0, 1.0]
    for row in rows:
        if math.isfinite(row.recovered):
            error = row.error if math.isfinite(row.error) else 0.0
            ends += [row.recovered - error, row.recovered + error]
    return max(min(ends), LIMITS[0]), min(max(ends), LIMITS[1])


def chart_line(row: RecoveredRow, low: float, high: float, width: int) -> Text:
    """``width`` cells: │ at 0 and ┊ at 1 (DPO), the bar from 0 to the value, the whisker ├──┤ over R ± s.e."""

    def cell(value: float) -> int:
        return round((min(max(value, low), high) - low) / (high - low) * (width - 1))

    cells = [(" ", "")] * width
    cells[cell(1.0)] = ("┊", MARK_STYLE)
    if math.isfinite(row.recovered):
        zero, end = cell(0.0), cell(row.recovered)
        for index in range(min(zero, end), max(zero, end) + 1):
            cells[index] = ("█", BAR_STYLE)
        if row.recovered > high or row.recovered < low:
            cells[end] = ("▶" if row.recovered > high else "◀", BAR_STYLE)
        if math.isfinite(row.error) and row.error > 0:
            left, right = cell(row.recovered - row.error), cell(row.recovered + row.error)
            for index in range(left + 1, right):
                if cells[index][0] != "█":
                    cells[index] = ("─", WHISKER_STYLE)
            cells[left], cells[right] = ("├", WHISKER_STYLE), ("┤", WHISKER_STYLE)
            if left == right:
                cells[left] = ("┼", WHISKER_STYLE)
    else:
        cells[cell(0.0)] = ("│", MARK_STYLE)
    text = Text()
    for char, style in cells:
        text.append(char, style)
    return text


def value_text(row: RecoveredRow) -> str:
    if not math.isfinite(row.recovered):
        return "n/a"
    error = f" ± {row.error:.1%}" if math.isfinite(row.error) else ""
    return f"{row.recovered:+.0%}{error}"


def chart(rows: list[RecoveredRow], width: int, highlighted: str | None = None) -> Text:
    """The title, one line per run (the highlighted run's label in reverse) and the scale's ends."""
    text = Text()
    if not rows:
        return text
    low, high = scale(rows)
    label_width = min(max(width - VALUE_WIDTH - 2 - MIN_BAR, 12), max(len(row.label) for row in rows))
    bar_width = max(width - label_width - VALUE_WIDTH - 2, 10)
    text.append("Recovered fraction of DPO's effect", style="bold")
    text.append("  █ run  ┊ DPO = 100%  ├─┤ ± 1 s.e.\n", style="dim")
    for row in rows:
        label = short_text(row.label, label_width).ljust(label_width)
        text.append(label, style="reverse" if row.run_id == highlighted else "bold")
        text.append(" ").append_text(chart_line(row, low, high, bar_width))
        text.append(" " + value_text(row).rjust(VALUE_WIDTH - 1) + "\n")
    left, right = f"{low:.0%}", f"{high:.0%}"
    text.append(" " * (label_width + 1) + left + right.rjust(bar_width - len(left)), style="dim")
    return text


class RecoveredChart(Static):
    """The chart over the width it is given; `show` sets the runs and the highlighted one."""

    DEFAULT_CSS = "RecoveredChart { height: auto; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[RecoveredRow] = []
        self.highlighted: str | None = None

    def show(self, rows: list[RecoveredRow], highlighted: str | None = None) -> None:
        self.rows, self.highlighted = rows, highlighted
        self.display = bool(rows)
        self.update(chart(rows, self.size.width or 80, highlighted))

    def on_resize(self) -> None:
        self.update(chart(self.rows, self.size.width, self.highlighted))
