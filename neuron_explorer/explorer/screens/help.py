"""`?`: every key of the screen below and of the app, from their declared bindings (so it cannot go stale)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

ABOUT = ("Δ = P_pre − P_dpo: a neuron's contribution to toxicity reduction (positive: it writes less toxicity "
         "after DPO). δ = ā_pre − ā_dpo. Groups TP↓ TN↓ AP↓ AN↓ reduce toxicity; TP↑ TN↑ AP↑ AN↑ are their mirrors. "
         "ctrl+p opens the command palette, which offers every action.")


def key_label(key: str) -> str:
    return ", ".join(part.replace("slash", "/").replace("question_mark", "?") for part in key.split(","))


class HelpScreen(ModalScreen):
    """The keys of the screen that was showing, of its focused widget, and of the app."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,question_mark,f1,q", "app.pop_screen", "close", id="help.close")]

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
        with VerticalScroll(id="help-body"):
            yield Static(Text(ABOUT), id="help-about")
            yield Static(table, id="help-keys")
            yield Static(Text("escape closes", style="dim"))
