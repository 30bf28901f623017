"""`?` or F1: every key of the screen below and of the app, from their declared bindings (so it cannot go stale), and
the glossary of every term and number the screens show."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..glossary import glossary

ABOUT = (
    "Δ = P_pre − P_dpo: a neuron's contribution to toxicity reduction (positive: it writes less toxicity "
    "after DPO). δ = ā_pre − ā_dpo. Groups TP↓ TN↓ AP↓ AN↓ reduce toxicity; TP↑ TN↑ AP↑ AN↑ are their mirrors. "
    "ctrl+p opens the command palette, which offers every action. The glossary follows the keys."
)


def key_label(key: str) -> str:
    return ", ".join(part.replace("slash", "/").replace("question_mark", "?") for part in key.split(","))


class HelpScreen(ModalScreen):
    """The keys of the screen that was showing, of its focused widget, and of the app."""

    CSS_PATH = "help.tcss"
    BINDINGS = [
        Binding("escape,question_mark,f1,q", "app.pop_screen", "close", id="help.close"),
        Binding("j,down", "scroll('down')", "scroll", show=False, id="help.down"),
        Binding("k,up", "scroll('up')", "scroll", show=False, id="help.up"),
        Binding("pagedown,space", "scroll('page_down')", "page down", show=False, id="help.page_down"),
        Binding("pageup", "scroll('page_up')", "page up", show=False, id="help.page_up"),
        Binding("G,end", "scroll('end')", "glossary", show=False, id="help.end"),
        Binding("g,home", "scroll('home')", "top", show=False, id="help.home"),
    ]

    def __init__(self, sections: list[tuple[str, list[Binding]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 1), show_header=False, expand=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(ratio=1)
        for title, bindings in self.sections:
            if not bindings:
                continue
            table.add_row(Text(title, style="bold underline"), "")
            for binding in bindings:
                table.add_row(key_label(binding.key), binding.tooltip or binding.description)
        terms = Table(box=None, padding=(0, 1), show_header=False, expand=True)
        terms.add_column(style="bold", no_wrap=True)
        terms.add_column(ratio=1)
        terms.add_row(Text("Glossary", style="bold underline"), "")
        for term, meaning in glossary():
            terms.add_row(Text(term), Text(meaning))
        with VerticalScroll(id="help-body"):
            yield Static(Text(ABOUT), id="help-about")
            yield Static(table, id="help-keys")
            yield Static(terms, id="help-glossary")
            yield Static(Text("escape closes · j/k, space/pgup, g/G scroll", style="dim"))

    def action_scroll(self, where: str) -> None:
        body = self.query_one("#help-body", VerticalScroll)
        {
            "down": body.scroll_down,
            "up": body.scroll_up,
            "page_down": body.scroll_page_down,
            "page_up": body.scroll_page_up,
            "end": body.scroll_end,
            "home": body.scroll_home,
        }[where](animate=False)
