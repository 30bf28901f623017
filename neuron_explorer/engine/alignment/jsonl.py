"""Reading text and JSON Lines files with one-line errors that name the file (and the line)."""

from __future__ import annotations

import json
from pathlib import Path

from neuron_explorer.errors import UserError


def read_utf8(path: Path) -> str:
    """The text of a file the user gave, refusing other encodings in one line instead of a UnicodeDecodeError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}): "
                        f"save it as UTF-8") from None
    except OSError as error:  # a folder, or no permission to read
        raise UserError(f"cannot read {path} ({error.strerror}): pass a readable file") from None


def read_jsonl(path: str | Path, what: str) -> list[dict]:
    """The objects of a JSONL file, blank lines skipped; `what` names the file in the missing-file error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist")
    rows = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}, line {number}: not valid JSON; write one JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {number}: expected a JSON object")
            rows.append(row)
    return rows
