"""The footer every screen shows: compact, so that a screen's own keys and the screen keys fit 80 columns."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Footer

# 1–5 switch screens; the footer shows them as one "12345 screens" entry (help and the palette name each)
SCREEN_KEYS = Binding.Group("screens", compact=True)


class KeyFooter(Footer):
    """Textual's footer in its compact style (one space between entries instead of two)."""

    def __init__(self) -> None:
        super().__init__(compact=True)
