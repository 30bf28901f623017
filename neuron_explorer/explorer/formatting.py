"""Small text helpers shared by the screens: numbers, bars and neuron ids."""

from __future__ import annotations

BAR_EIGHTHS = " ▏▎▍▌▋▊▉█"


def signed(value: float) -> str:
    """Δ-like numbers: signed, three significant digits, scientific (they span many decades)."""
    return f"{value:+.2e}"


def bar(fraction: float, width: int) -> str:
    """A left-aligned bar of ``fraction`` (0–1) of ``width`` cells, in eighths of a cell."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    text = "█" * full + (BAR_EIGHTHS[rest] if rest else "")
    return text.ljust(width)


def short_text(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
