"""Small modal dialogs: one line of text (jump to an id, name a set, export path), a choice from a list, the filter
form, and the error dialog that a failed background worker opens instead of ending the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message_pump import MessagePump
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from neuron_explorer.cache.schema import GROUP_NAMES

from ..state import COLUMNS, THRESHOLD_OPERATORS, Filters

Answer = TypeVar("Answer")

if TYPE_CHECKING:
    _Owner = MessagePump  # what ShowsWorkerErrors is mixed into: an app or a screen
else:
    _Owner = object


class Dialog(ModalScreen[Answer | None]):
    """A modal question: escape (or a Cancel button) answers None."""

    BINDINGS = [Binding("escape", "cancel", "cancel", id="dialog.cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class ErrorDialog(Dialog[None]):
    """What went wrong in the background; enter or escape closes it and the explorer goes on."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("enter", "cancel", "close", id="dialog.close")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text, self.message = title, message

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="error-dialog"):
            yield Label(Text(self.title_text), classes="dialog-title")
            yield Label(Text(self.message), id="error-message")
            yield Label("enter or escape: close", classes="dialog-hint")


class ShowsWorkerErrors(_Owner):
    """Mixed into every app or screen that runs workers (all with ``exit_on_error=False``): a worker that raises
    opens an ErrorDialog instead of ending the app (Textual's worker messages do not bubble, so each owner listens)."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state == WorkerState.ERROR:
            self.app.push_screen(
                ErrorDialog(
                    f"{worker.description or worker.name} failed", f"{type(worker.error).__name__}: {worker.error}"
                )
            )


class PromptDialog(Dialog[str]):
    """Ask for one line of text; enter answers, escape cancels (answers None)."""

    CSS_PATH = "dialogs.tcss"

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text, self.value, self.placeholder = title, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.title_text), classes="dialog-title")
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt-input")
            yield Label("enter: ok   escape: cancel", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class ConfirmDialog(Dialog[bool]):
    """A yes/no question: y or enter answers yes; n or escape answers no (None)."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("y,enter", "yes", "yes", id="confirm.yes"), Binding("n", "cancel", "no", id="confirm.no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="confirm-dialog"):
            yield Label(Text(self.question), classes="dialog-title")
            yield Label("y or enter: yes   n or escape: no", classes="dialog-hint")

    def action_yes(self) -> None:
        self.dismiss(True)


class ChoiceDialog(Dialog[str]):
    """Choose one of a list (a prompt, a try of the lab's history, a set to patch): typing filters it (every word
    typed must appear), down moves into the list, enter answers the highlighted option's id."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("down", "into_list", "to the list", show=False, id="choice.into_list")]

    def __init__(self, title: str, choices: list[tuple[str, str]]) -> None:
        """``choices``: (what is shown, the id answered)."""
        super().__init__()
        self.title_text, self.choices = title, choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="choice-dialog"):
            yield Label(Text(self.title_text), classes="dialog-title")
            yield Input(placeholder="type to filter", id="choice-filter")
            yield OptionList(*self.options(""), id="choices")
            yield Label("enter: choose   ↓: the list   escape: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#choice-filter", Input).focus()
        self.query_one(OptionList).highlighted = 0 if self.choices else None

    def options(self, typed: str) -> list[Option]:
        words = typed.lower().split()
        return [Option(Text(text), id=key) for text, key in self.choices if all(word in text.lower() for word in words)]

    def on_input_changed(self, event: Input.Changed) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(self.options(event.value))
        options.highlighted = 0 if options.option_count else None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is not None:
            self.dismiss(options.get_option_at_index(options.highlighted).id)

    def action_into_list(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class FilterDialog(Dialog[Filters]):
    """Group, cluster, sign of Δ and a threshold on one column; tab moves between fields."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("ctrl+s", "apply", "apply", id="dialog.apply")]

    def __init__(self, filters: Filters) -> None:
        super().__init__()
        self.filters = filters

    def compose(self) -> ComposeResult:
        filters = self.filters
        threshold = filters.threshold or ("contribution", "|x|>=", None)
        with Vertical(classes="dialog", id="filter-dialog"):
            yield Label("Filter neurons", classes="dialog-title")
            with Horizontal(classes="field"):
                yield Label("group (v1)", classes="field-label")
                yield Select(
                    [(name, name) for name in GROUP_NAMES],
                    value=filters.group or Select.NULL,
                    prompt="any",
                    id="filter-group",
                )
            with Horizontal(classes="field"):
                yield Label("sign of Δ", classes="field-label")
                yield Select(
                    [("Δ > 0 (reduces toxicity)", "+"), ("Δ < 0 (raises it)", "-")],
                    value=filters.sign or Select.NULL,
                    prompt="any",
                    id="filter-sign",
                )
            with Horizontal(classes="field"):
                yield Label("cluster", classes="field-label")
                yield Input(
                    value="" if filters.cluster is None else str(filters.cluster),
                    placeholder="any",
                    type="integer",
                    id="filter-cluster",
                )
            with Horizontal(classes="field"):
                yield Label("threshold", classes="field-label")
                yield Select(
                    [(column.label, column.key) for column in COLUMNS if column.number_format],
                    value=threshold[0],
                    allow_blank=False,
                    id="filter-column",
                )
                yield Select(
                    [(operator.replace("x", "·"), operator) for operator in THRESHOLD_OPERATORS],
                    value=threshold[1],
                    allow_blank=False,
                    id="filter-operator",
                )
                yield Input(
                    value="" if threshold[2] is None else f"{threshold[2]:g}",
                    placeholder="none",
                    type="number",
                    id="filter-value",
                )
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Clear", id="clear")
                yield Button("Cancel", id="cancel")

    def on_input_submitted(self) -> None:
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.action_apply()
        elif event.button.id == "clear":
            self.dismiss(Filters())
        else:
            self.action_cancel()

    def action_apply(self) -> None:
        group = self.query_one("#filter-group", Select).value
        sign = self.query_one("#filter-sign", Select).value
        cluster = self.query_one("#filter-cluster", Input).value.strip()
        value = self.query_one("#filter-value", Input).value.strip()
        threshold = None
        if value:
            try:
                # both selects have allow_blank=False: their values are the column's and the operator's strings
                threshold = (
                    str(self.query_one("#filter-column", Select).value),
                    str(self.query_one("#filter-operator", Select).value),
                    float(value),
                )
            except ValueError:
                self.notify(f"'{value}' is not a number", severity="error")
                return
        self.dismiss(
            Filters(
                group=None if group is Select.NULL else str(group),
                sign=None if sign is Select.NULL else str(sign),
                cluster=int(cluster) if cluster else None,
                threshold=threshold,
            )
        )
