"""Atomic files: everything the tool writes appears complete under its name, or not at all.

A writer fills a hidden ``.NAME.PID.tmp`` beside the target, renamed into place only when the body and the writer's
own close succeeded. On any failure the temporary is removed, whatever failed (a full disk often fails only at
close), and an I/O error becomes one UserError. The pid in the name lets `sweep_stale_temporaries` remove what
killed processes left behind; it runs whenever a cache or sidecar folder is opened for writing, and for its own
target whenever `atomic_path` writes one (a --json file, a tuned model folder). Writers create
the temporary themselves with ``open``/HDF5/safetensors (never ``mkstemp``, whose 0600 would hide runs from the
other users of a shared cache), and `atomic_path` sets the user's umask on the result all the same.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from neuron_explorer.errors import UserError

TEMPORARY_SUFFIX = ".tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)
_WRITE_FAILURES = _NO_SPACE + _NOT_ALLOWED  # what a failing write looks like; other errors of the body pass through


def temporary_path(target: Path, pid: int | None = None) -> Path:
    return target.with_name(f".{target.name}.{pid or os.getpid()}{TEMPORARY_SUFFIX}")


def sweep_stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Remove the temporaries (files or folders) of processes that are no longer alive, of the targets in `folder`
    whose name matches the glob `name`; return what was removed."""
    removed = []
    for leftover in folder.glob(f".{name}.*{TEMPORARY_SUFFIX}") if folder.is_dir() else []:
        pid_text = leftover.name[: -len(TEMPORARY_SUFFIX)].rpartition(".")[2]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            _remove(leftover)
            removed.append(leftover)
    return removed


@contextmanager
def atomic_path(target: Path, *, replace: bool = True, advice: str = "choose another location") -> Iterator[Path]:
    """Yield the temporary path for ``target`` (a file or a folder the body creates); move it into place on success.

    ``replace=False`` publishes by hard link, which raises FileExistsError instead of replacing an existing file.
    ``advice`` ends the one-line error of a failed write (e.g. "free some space or choose another -o").
    """
    target = Path(target)
    temporary = temporary_path(target)
    _remove(temporary)  # a leftover of this very process (an earlier failed attempt)
    sweep_stale_temporaries(target.parent, glob.escape(target.name))  # and those of killed ones
    try:
        yield temporary
    except OSError as error:
        _remove(temporary)
        if error.errno in _WRITE_FAILURES:
            raise UserError(_describe(error, target, advice)) from None
        raise
    except BaseException:
        _remove(temporary)
        raise
    try:
        _apply_umask(temporary)
        if not replace:
            os.link(temporary, target)
        elif temporary.is_dir() and target.exists():
            _replace_folder(temporary, target)
        else:
            os.replace(temporary, target)
    except FileExistsError:
        raise
    except OSError as error:
        raise UserError(_describe(error, target, advice)) from None
    finally:
        _remove(temporary)


def write_text_atomically(target: Path, text: str, **options) -> None:
    """``target`` holds ``text`` (UTF-8) completely, or keeps what it held before."""
    with atomic_path(target, **options) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())


def write_json_atomically(target: Path, payload, **options) -> None:
    write_text_atomically(target, json.dumps(payload, ensure_ascii=False, indent=1, default=_json_default),
                          **options)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _describe(error: OSError, target: Path, advice: str) -> str:
    if error.errno in _NO_SPACE:
        return f"no space left to write {target} ({error.strerror}): free some space or {advice}"
    if error.errno in _NOT_ALLOWED:
        return f"cannot write {target} ({error.strerror}): {advice}"
    return f"could not write {target} ({error.strerror or error}): {advice}"


def _replace_folder(temporary: Path, target: Path) -> None:
    """Folders cannot be renamed over a non-empty folder: move the old one aside first, then drop it."""
    old = target.with_name(f".{target.name}.old.{os.getpid()}{TEMPORARY_SUFFIX}")
    _remove(old)
    os.replace(target, old)
    os.replace(temporary, target)
    _remove(old)


def _apply_umask(path: Path) -> None:
    """Give what the body wrote the permissions a plain ``open`` would (0644 under the usual umask 022)."""
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
