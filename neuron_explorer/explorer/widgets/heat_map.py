"""Layers × tokens heat maps side by side (the lab's base, DPO and base − DPO lens), drawn with the Line API.

Only ANSI colours and shade characters: red is positive, blue negative, and " ░▒▓█" says the magnitude on the scale
in the panel's title (±its largest |value| over the generated tokens; larger prompt cells show full), so a map stays
readable in 16 colours and in monochrome. Layers are
binned (averaged) to fit the height; columns are tokens, one cell each, scrolled so that the token cursor stays
visible. Keys: left/right (h/l) move the token cursor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from neuron_explorer.engine.lab.protocol import layer_bins

SHADES = " ░▒▓█"
PANEL_GAP = 2
FRAME_LINES = 3  # the titles above the maps, the token axis and the caption below them


@dataclass(frozen=True)
class Panel:
    """One map: a title, an (n_layers, T) array and its column tokens (None: a difference of two runs)."""

    title: str
    values: np.ndarray
    tokens: list[str] | None = None


def shade(value: float, scale: float) -> str:
    """The shade character of |value| on a 0..scale scale (a blank only for what rounds to nothing). Plain Python:
    it runs once per drawn cell."""
    if scale <= 0 or not math.isfinite(value):
        return SHADES[0]
    return SHADES[min(max(math.ceil(abs(value) / scale * 4 - 1e-9), 0), 4)]


class HeatMap(Widget, can_focus=True):
    """Panels that share the columns (tokens) and rows (layers); panels with a shared `scale_group` share a scale."""

    BINDINGS = [
        Binding("right,l", "token(1)", "next token", show=False, id="heat_map.next"),
        Binding("left,h", "token(-1)", "previous token", show=False, id="heat_map.previous"),
        Binding("end,G", "token(10000)", "last token", show=False, id="heat_map.last"),
        Binding("home,g", "token(-10000)", "first token", show=False, id="heat_map.first"),
    ]
    COMPONENT_CLASSES = {
        "heat-map--title",
        "heat-map--positive",
        "heat-map--negative",
        "heat-map--axis",
        "heat-map--cursor",
        "heat-map--empty",
    }
    DEFAULT_CSS = """
    HeatMap { height: auto; }
    HeatMap > .heat-map--title { text-style: bold; }
    HeatMap > .heat-map--positive { color: ansi_red; }
    HeatMap > .heat-map--negative { color: ansi_blue; }
    HeatMap > .heat-map--axis { color: $text-muted; }
    HeatMap > .heat-map--cursor { text-style: reverse; }
    HeatMap:focus > .heat-map--cursor { text-style: reverse bold; }
    HeatMap > .heat-map--empty { color: $text-muted; }
    """

    cursor: reactive[int] = reactive(0, repaint=True)

    def __init__(self, empty_text: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.empty_text = empty_text
        self.label = ""
        self.panels: list[Panel] = []
        self.scale_groups: list[int] = []
        self._binned: tuple[int, list[np.ndarray], list[float]] = (0, [], [])  # (rows, each panel's rows, scales)
        self.n_prompt = 0  # the first columns are the prompt's tokens; the rest were generated
        self.first_column = 0

    def show(self, label: str, panels: list[Panel], scale_groups: list[int], n_prompt: int) -> None:
        """Draw ``panels`` of what ``label`` names; those with the same number in ``scale_groups`` share one colour
        scale (the largest |value| drawn)."""
        self.label, self.panels, self.scale_groups, self.n_prompt = label, panels, scale_groups, n_prompt
        self._binned = (0, [], [])
        # the generated tokens first: the end of the prompt only where they leave room
        self.first_column = min(n_prompt, max(self.columns - self._geometry()[1], 0))
        self.cursor = min(n_prompt, max(self.columns - 1, 0))  # the first generated token
        self._follow_cursor()
        self.refresh(layout=True)  # the height follows the number of layers

    @property
    def columns(self) -> int:
        return max((panel.values.shape[1] for panel in self.panels), default=0)

    @property
    def n_layers(self) -> int:
        return self.panels[0].values.shape[0] if self.panels else 0

    def binned(self, rows: int) -> tuple[list[np.ndarray], list[float]]:
        """Each panel averaged over the layer bins of ``rows`` rows, and its colour scale (cached per height)."""
        if self._binned[0] != rows:
            bins = layer_bins(self.n_layers, rows)
            values = [np.stack([panel.values[layers].mean(axis=0) for layers in bins]) for panel in self.panels]
            largest: dict[int, float] = {}
            for array, group in zip(values, self.scale_groups):
                # scaled on the generated tokens: a prompt's first position (an attention sink) can be 10× larger
                generated = array[:, self.n_prompt :] if array.shape[1] > self.n_prompt else array
                finite = np.abs(generated[np.isfinite(generated)])
                largest[group] = max(largest.get(group, 0.0), float(finite.max()) if finite.size else 0.0)
            self._binned = (rows, values, [largest[group] for group in self.scale_groups])
        return self._binned[1], self._binned[2]

    def _geometry(self) -> tuple[int, int, int]:
        """(gutter, columns shown per panel, panel width) for the current width."""
        gutter = len(f"L{max(self.n_layers - 1, 0)}") + 1
        count = max(len(self.panels), 1)
        panel_width = max((self.size.width - PANEL_GAP * (count - 1)) // count, gutter + 1)
        return gutter, panel_width - gutter, panel_width

    def action_token(self, step: int) -> None:
        self.cursor = max(0, min(self.cursor + step, self.columns - 1))
        self._follow_cursor()

    def _follow_cursor(self) -> None:
        shown = self._geometry()[1]
        if self.cursor < self.first_column:
            self.first_column = self.cursor
        elif self.cursor >= self.first_column + shown:
            self.first_column = self.cursor - shown + 1

    def on_resize(self) -> None:
        self._follow_cursor()

    def caption(self) -> str:
        """What the maps show and the token under the cursor in each run."""
        if not self.panels:
            return ""
        if self.cursor < self.n_prompt:
            where = f"prompt token {self.cursor + 1}"
        else:
            where = f"generated token {self.cursor - self.n_prompt + 1}"  # counted from 1, as one reads them
        read = {
            panel.title: panel.tokens[self.cursor]
            for panel in self.panels
            if panel.tokens is not None and self.cursor < len(panel.tokens)
        }
        tokens = " · ".join(f"{title} {token!r}" for title, token in read.items())
        differ = " (different tokens: a difference map compares positions here)" if len(set(read.values())) > 1 else ""
        return f"{self.label} │ {where}: {tokens}{differ}"

    # -- drawing ---------------------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if not self.panels:
            text = self.empty_text if y == 0 else ""
            return Strip([Segment(text, base + self.get_component_rich_style("heat-map--empty"))]).adjust_cell_length(
                width, base
            )
        gutter, shown, panel_width = self._geometry()
        bins = layer_bins(self.n_layers, self.size.height - FRAME_LINES)
        values, scales = self.binned(len(bins))
        axis = base + self.get_component_rich_style("heat-map--axis")
        if y == len(bins) + 2:
            legend = [
                Segment("█+", base + self.get_component_rich_style("heat-map--positive")),
                Segment(" ", base),
                Segment("█−", base + self.get_component_rich_style("heat-map--negative")),
                Segment(f"  {self.caption()}", axis),
            ]
            return Strip(legend).adjust_cell_length(width, base).crop(0, width)
        if y > len(bins) + 2:
            return Strip.blank(width, base)
        segments: list[Segment] = []
        for number, (panel, rows, scale) in enumerate(zip(self.panels, values, scales)):
            if number:
                segments.append(Segment(" " * PANEL_GAP, base))
            if y == 0:
                title = base + self.get_component_rich_style("heat-map--title")
                text = f"{panel.title} ±{scale:.2g}"
                segments.append(Segment(text[:panel_width].ljust(panel_width), title))
            elif y == len(bins) + 1:
                segments += self._axis(panel, gutter, shown, axis)
            else:
                segments += self._row(rows[y - 1], bins[y - 1][0], scale, gutter, shown, base, axis)
        return Strip(segments).adjust_cell_length(width, base).crop(0, width)

    def _row(
        self, values: np.ndarray, first_layer: int, scale: float, gutter: int, shown: int, base: Style, axis: Style
    ) -> list[Segment]:
        """One drawn row: the label of its first layer, then a shaded cell per shown column."""
        label = f"L{first_layer}".ljust(gutter)
        positive = base + self.get_component_rich_style("heat-map--positive")
        negative = base + self.get_component_rich_style("heat-map--negative")
        cursor = self.get_component_rich_style("heat-map--cursor")
        segments = [Segment(label, axis)]
        run: list[str] = []  # consecutive cells of one style become one segment
        run_style = None
        row = values.tolist()
        for column in range(self.first_column, self.first_column + shown):
            if column >= len(row):
                char, style = " ", base
            else:
                value = row[column]
                char, style = shade(value, scale), positive if value > 0 else negative
                if column == self.cursor:
                    style = style + cursor
            if style is not run_style and run:
                segments.append(Segment("".join(run), run_style))
                run = []
            run.append(char)
            run_style = style
        if run:
            segments.append(Segment("".join(run), run_style))
        return segments

    def _axis(self, panel: Panel, gutter: int, shown: int, style: Style) -> list[Segment]:
        """Prompt columns as ·, generated ones as ─, the cursor as ▲; "…" in the gutter when columns are hidden."""
        marks = []
        for column in range(self.first_column, self.first_column + shown):
            if column >= panel.values.shape[1]:
                marks.append(" ")
            else:
                marks.append("▲" if column == self.cursor else "·" if column < self.n_prompt else "─")
        hidden = "…" if self.first_column else ""
        return [Segment(hidden.ljust(gutter) + "".join(marks), style)]

    def get_content_height(self, container, viewport, width: int) -> int:
        return self.n_layers + FRAME_LINES if self.panels else 1
