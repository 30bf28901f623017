"""Reading JSON Lines with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

from neuron_explorer.errors import UserError


def read_jsonl(path: str | Path, what: str) -> list[dict]:
    """The objects of a JSONL file, blank lines skipped; `what` names the file in the missing-file error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}, line {number}: not valid JSON; write one JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {number}: expected a JSON object")
            rows.append(row)
    return rows
