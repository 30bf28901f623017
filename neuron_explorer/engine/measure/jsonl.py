"""Reading text and JSON Lines files with one-line errors that name the file (and the line)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from neuron_explorer.errors import UserError


def read_utf8(path: Path) -> str:
    """The text of a file the user gave, refusing other encodings in one line instead of a UnicodeDecodeError, and
    anything but a regular file (a FIFO or /dev/zero would never end)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode) and not path.is_dir():
            raise UserError(f"{path} is not a regular file (a pipe or a device): pass a text file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}): "
            f"save it as UTF-8"
        ) from None
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
                json.dumps(row, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\ud800) is not text
            except json.JSONDecodeError:
                raise UserError(f"{path}, line {number}: not valid JSON; write one JSON object per line") from None
            except RecursionError:
                raise UserError(
                    f"{path}, line {number}: JSON nested too deeply; write one flat object per line"
                ) from None
            except UnicodeEncodeError:
                raise UserError(
                    f"{path}, line {number}: holds a lone surrogate escape (such as \\ud800), which is "
                    f"not text; write UTF-8 text"
                ) from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {number}: expected a JSON object")
            rows.append(row)
    return rows
