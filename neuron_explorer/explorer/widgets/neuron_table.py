"""A virtual table over a neuron source (the Store's view, or a lab prompt's top neurons): it formats only the rows
on screen, so 458,752 neurons cost nothing.

The id column stays put while the other columns scroll sideways under the column cursor; the header shows the
sort column and direction. Keys: j/k and arrows move, h/l and left/right choose a column, s sorts by it.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from ..messages import MarksChanged, NeuronChosen, SortRequested
from ..state import COLUMNS, SORT_GLYPHS, Column, NeuronSource, is_reducing

FROZEN_COLUMNS = 1  # the id column
MARK_WIDTH = 2  # "● " in front of a marked neuron


def format_cell(column: Column, value) -> str:
    if value is None:
        text = "·"
    elif column.number_format:
        text = column.number_format.format(value)
    else:
        text = str(value)
    return (
        text[: column.width].rjust(column.width)
        if column.number_format or column.key == "cluster"
        else text[: column.width].ljust(column.width)
    )


class NeuronTable(Widget, can_focus=True):
    """Neurons as a scrolling table; the source owns the rows, their order and the marks, this widget the cursor."""

    BINDINGS = [
        Binding("down,j", "cursor_down", "down", show=False, id="table.down"),
        Binding("up,k", "cursor_up", "up", show=False, id="table.up"),
        Binding("pagedown,ctrl+f", "page_down", "page down", show=False, id="table.page_down"),
        Binding("pageup,ctrl+b", "page_up", "page up", show=False, id="table.page_up"),
        Binding("home,g", "first", "first row", show=False, id="table.first"),
        Binding("end,G", "last", "last row", show=False, id="table.last"),
        Binding("right,l", "column_right", "next column", show=False, id="table.column_right"),
        Binding("left,h", "column_left", "previous column", show=False, id="table.column_left"),
        Binding("s", "sort", "sort", id="table.sort", tooltip="sort by the column under the cursor; again flips"),
        Binding("space", "mark", "mark", id="table.mark", tooltip="mark or unmark the neuron"),
        Binding("enter", "choose", "detail", id="table.choose", tooltip="open the neuron's detail"),
    ]
    COMPONENT_CLASSES = {
        "neuron-table--header",
        "neuron-table--sorted",
        "neuron-table--cursor",
        "neuron-table--cursor-cell",
        "neuron-table--reducing",
        "neuron-table--mirror",
        "neuron-table--mark",
        "neuron-table--empty",
    }
    DEFAULT_CSS = """
    NeuronTable { height: 1fr; }
    NeuronTable > .neuron-table--header { text-style: bold; background: $panel; color: $foreground; }
    NeuronTable > .neuron-table--sorted { text-style: bold underline; color: $accent; }
    NeuronTable > .neuron-table--cursor { background: $boost; }
    NeuronTable:focus > .neuron-table--cursor { background: $primary 40%; }
    NeuronTable > .neuron-table--cursor-cell { text-style: reverse; }
    NeuronTable > .neuron-table--reducing { color: ansi_green; }
    NeuronTable > .neuron-table--mirror { color: ansi_red; }
    NeuronTable > .neuron-table--mark { color: ansi_yellow; text-style: bold; }
    NeuronTable > .neuron-table--empty { color: $text-muted; }
    """

    cursor_row: reactive[int] = reactive(0, always_update=True, repaint=True)
    cursor_column: reactive[int] = reactive(2, repaint=True)

    def __init__(self, source: NeuronSource, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.top_row = 0
        self.first_scrolled_column = FROZEN_COLUMNS
        self._page_start = 0
        self._page: list[list] = []  # formatted values of rows _page_start.. (empty: nothing cached)

    # -- data ----------------------------------------------------------------------------------------------
    def show(self, source: NeuronSource) -> None:
        """Read another source from its top."""
        self.source = source
        self.reload()

    def reload(self, keep_cursor: bool = False) -> None:
        """The source's rows changed: forget the cached page and start at the top (or keep the cursor row)."""
        self._page = []
        row = self.cursor_row if keep_cursor else 0
        self.top_row = 0 if not keep_cursor else self.top_row
        self.move_to(min(row, max(self.source.row_count - 1, 0)))
        self.refresh()

    def _row_values(self, row: int) -> list | None:
        if not 0 <= row < self.source.row_count:
            return None
        if not self._page_start <= row < self._page_start + len(self._page):
            start = max(0, row - 8)
            frame = self.source.rows(start, start + max(self.size.height, 24) + 16)
            keys = ["layer", "neuron"] + [column.key for column in COLUMNS[1:]]
            self._page = [list(values) for values in frame.select(keys).iter_rows()]
            self._page_start = start
        return self._page[row - self._page_start]

    @property
    def visible_rows(self) -> int:
        return max(self.size.height - 1, 1)

    # -- cursor ------------------------------------------------------------------------------------------------
    def move_to(self, row: int) -> None:
        """Put the cursor on a row and scroll so that it is visible."""
        row = max(0, min(row, self.source.row_count - 1))
        if row < self.top_row:
            self.top_row = row
        elif row >= self.top_row + self.visible_rows:
            self.top_row = row - self.visible_rows + 1
        self.cursor_row = row

    def current_neuron(self) -> tuple[int, int] | None:
        return self.source.neuron_at(self.cursor_row)

    def action_cursor_down(self) -> None:
        self.move_to(self.cursor_row + 1)

    def action_cursor_up(self) -> None:
        self.move_to(self.cursor_row - 1)

    def action_page_down(self) -> None:
        self.top_row = min(self.top_row + self.visible_rows, max(self.source.row_count - self.visible_rows, 0))
        self.move_to(self.cursor_row + self.visible_rows)

    def action_page_up(self) -> None:
        self.top_row = max(self.top_row - self.visible_rows, 0)
        self.move_to(self.cursor_row - self.visible_rows)

    def action_first(self) -> None:
        self.move_to(0)

    def action_last(self) -> None:
        self.move_to(self.source.row_count - 1)

    def action_column_right(self) -> None:
        self.cursor_column = min(self.cursor_column + 1, len(COLUMNS) - 1)
        self._keep_column_visible()

    def action_column_left(self) -> None:
        self.cursor_column = max(self.cursor_column - 1, 0)
        self._keep_column_visible()

    def _keep_column_visible(self) -> None:
        column = max(self.cursor_column, FROZEN_COLUMNS)
        if column < self.first_scrolled_column:
            self.first_scrolled_column = column
        while self.first_scrolled_column < column and self._scrolled_end(column) > self.size.width:
            self.first_scrolled_column += 1

    def _scrolled_end(self, column: int) -> int:
        frozen = MARK_WIDTH + sum(c.width + 1 for c in COLUMNS[:FROZEN_COLUMNS])
        return frozen + sum(c.width + 1 for c in COLUMNS[self.first_scrolled_column : column + 1])

    def action_sort(self) -> None:
        self.post_message(SortRequested(COLUMNS[self.cursor_column].key))

    def action_mark(self) -> None:
        neuron = self.current_neuron()
        if neuron is not None:
            self.source.toggle_mark(*neuron)
            self.post_message(MarksChanged())
            self.move_to(self.cursor_row + 1)

    def action_choose(self) -> None:
        neuron = self.current_neuron()
        if neuron is not None:
            self.post_message(NeuronChosen(*neuron))

    def on_resize(self, _: events.Resize) -> None:
        self._page = []
        self.move_to(self.cursor_row)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.top_row = min(self.top_row + 3, max(self.source.row_count - self.visible_rows, 0))
        self.move_to(max(self.cursor_row, self.top_row))
        self.refresh()

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.top_row = max(self.top_row - 3, 0)
        self.move_to(min(self.cursor_row, self.top_row + self.visible_rows - 1))
        self.refresh()

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(self.top_row + event.y - 1)

    # -- drawing -----------------------------------------------------------------------------------------------
    def _shown_columns(self) -> list[tuple[int, Column]]:
        """The frozen columns, then the scrolled ones that fit whole (a column is never cut mid-value)."""
        shown = list(enumerate(COLUMNS[:FROZEN_COLUMNS]))
        end = MARK_WIDTH + sum(column.width + 1 for _, column in shown)
        for index in range(self.first_scrolled_column, len(COLUMNS)):
            end += COLUMNS[index].width + 1
            if end - 1 > self.size.width and index > self.first_scrolled_column:
                break
            shown.append((index, COLUMNS[index]))
        return shown

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            return self._header(width)
        row = self.top_row + y - 1
        values = self._row_values(row)
        if values is None:
            if row == 0 and self.source.row_count == 0:
                style = self.get_component_rich_style("neuron-table--empty")
                text = f" {self.source.empty_text}"
                return Strip([Segment(text, style)]).adjust_cell_length(width, base)
            return Strip.blank(width, base)
        layer, index = values[0], values[1]
        cells = dict(zip([column.key for column in COLUMNS[1:]], values[2:]))
        cells["id"] = f"L{layer}/N{index}"
        on_cursor = row == self.cursor_row
        row_style = base + self.get_component_rich_style("neuron-table--cursor") if on_cursor else base
        marked = (layer, index) in self.source.marked
        segments = [
            Segment(
                "● " if marked else "  ",
                row_style + self.get_component_rich_style("neuron-table--mark") if marked else row_style,
            )
        ]
        for column_index, column in self._shown_columns():
            style = row_style
            if column.key == "group":
                group = str(cells["group"])
                style += self.get_component_rich_style(
                    "neuron-table--reducing" if is_reducing(group) else "neuron-table--mirror"
                )
            if on_cursor and column_index == self.cursor_column:
                style += self.get_component_rich_style("neuron-table--cursor-cell")
            segments.append(Segment(format_cell(column, cells[column.key]), style))
            segments.append(Segment(" ", row_style))
        return Strip(segments).adjust_cell_length(width, row_style).crop(0, width)

    def _header(self, width: int) -> Strip:
        header = self.rich_style + self.get_component_rich_style("neuron-table--header")
        sorted_style = self.get_component_rich_style("neuron-table--sorted")
        segments = [Segment(" " * MARK_WIDTH, header)]
        for column_index, column in self._shown_columns():
            label = column.label
            style: Style = header
            if column.key == self.source.sort_column:
                label += SORT_GLYPHS[self.source.descending]
                style = header + sorted_style
            if column_index == self.cursor_column:
                style += Style(reverse=True)
            text = label[: column.width]
            text = (
                text.rjust(column.width)
                if column.number_format or column.key == "cluster"
                else text.ljust(column.width)
            )
            segments += [Segment(text, style), Segment(" ", header)]
        return Strip(segments).adjust_cell_length(width, header).crop(0, width)
