"""Atomic files: everything the tool writes appears complete under its name, or not at all.

A writer fills a hidden ``.NAME.HOST.PID.tmp`` beside the target, renamed into place only when the body and the
writer's own close succeeded. On any failure the temporary is removed, whatever failed (a full disk often fails only
at close), and an I/O error becomes one UserError. The name lets `sweep_stale_temporaries` remove what killed
processes left behind: HOST tells apart the machines and PID namespaces (containers) that share a folder, so only a
temporary written here, whose pid is gone, is removed; a pid means nothing in another namespace. The sweep runs
whenever a cache or sidecar folder is opened for writing, and for its own target whenever `atomic_path` writes one
(a --json file, a tuned model folder). A target that exists and is not a regular file or folder (`/dev/null`, a
FIFO) is refused: a rename would replace it. Writers create
the temporary themselves with ``open``/HDF5/safetensors (never ``mkstemp``, whose 0600 would hide runs from the
other users of a shared cache), and `atomic_path` sets the user's umask on the result all the same.
"""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypedDict

from neuron_explorer.errors import UserError

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; only annotations use it (requires-python is 3.10)

TEMPORARY_SUFFIX = ".tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)
_WRITE_FAILURES = _NO_SPACE + _NOT_ALLOWED  # what a failing write looks like; other errors of the body pass through


class AtomicOptions(TypedDict, total=False):
    """The keyword options of `atomic_path` that the writers below pass on."""

    replace: bool
    advice: str


def temporary_path(target: Path, pid: int | None = None) -> Path:
    """``.NAME.HOST.PID.tmp`` beside ``target``: HOST is `writer_host()`, PID this process's (or ``pid``)."""
    return target.with_name(f".{target.name}.{writer_host()}.{pid or os.getpid()}{TEMPORARY_SUFFIX}")


@functools.cache
def writer_host() -> str:
    """``h`` and 10 hex digits of the host name, boot and PID namespace: equal for the processes whose pids this
    process can check, different for another machine or container writing into the same folder."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            parts.append("")
    return "h" + hashlib.blake2b("|".join(parts).encode(), digest_size=5).hexdigest()


def sweep_stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Remove the temporaries (files or folders) of processes of this host and namespace that are no longer alive,
    of the targets in `folder` whose name matches the glob `name`; return what was removed. Temporaries of other
    hosts or namespaces, and names without a host, are left alone: whether their writer lives cannot be known."""
    removed = []
    for leftover in folder.glob(f".{name}.{writer_host()}.*{TEMPORARY_SUFFIX}") if folder.is_dir() else []:
        pid_text = leftover.name[: -len(TEMPORARY_SUFFIX)].rpartition(".")[2]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            _remove(leftover)
            removed.append(leftover)
    return removed


def refuse_special_file(target: Path, advice: str = "choose another location") -> None:
    """An existing target that is not a regular file or folder (a device such as /dev/null, a FIFO, a socket)
    would be replaced by the rename: refuse it in one line."""
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(
            f"{target} is not a regular file (a device, pipe or socket), and writing would replace it: {advice}"
        )


def nearest_folder(path: Path) -> Path:
    """``path`` or its nearest parent that exists: where the folders still missing on the path would be created."""
    return next(folder for folder in (path, *path.parents) if folder.exists())


def write_error(folder: Path) -> OSError | None:
    """Why no file can be created in ``folder``, or None. Creating and removing one is the only test that also holds
    for root and for read-only file systems; a command asks before its long work, not when it writes at the end."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".neuron-explorer-write-check.")
    except OSError as error:
        return error
    os.close(handle)
    os.unlink(probe)
    return None


def check_output_folder(target: Path, advice: str = "choose another -o path") -> None:
    """The folder that will hold ``target`` exists, checked before a long run rather than at its end: the temporary
    is written beside the target, and nothing here creates folders the user did not ask for."""
    folder = Path(target).parent
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist: create it or {advice}")


@contextmanager
def atomic_path(target: Path, *, replace: bool = True, advice: str = "choose another location") -> Iterator[Path]:
    """Yield the temporary path for ``target`` (a file or a folder the body creates); move it into place on success.

    ``replace=False`` publishes by hard link, which raises FileExistsError instead of replacing an existing file.
    ``advice`` ends the one-line error of a failed write (e.g. "free some space or choose another -o").
    """
    target = Path(target)
    refuse_special_file(target, advice)
    temporary = temporary_path(target)
    _remove(temporary)  # a leftover of this very process (an earlier failed attempt)
    sweep_stale_temporaries(target.parent, glob.escape(target.name))  # and those of killed ones
    try:
        yield temporary
    except BaseException as error:
        _remove(temporary)
        message = write_failure_message(error, target, advice)
        if message:
            raise UserError(message) from None
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


def write_text_atomically(target: Path, text: str, **options: Unpack[AtomicOptions]) -> None:
    """``target`` holds ``text`` (UTF-8) completely, or keeps what it held before."""
    with atomic_path(target, **options) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())


def parse_json(text: str) -> object:
    """Strict JSON, the reading twin of `write_json_atomically`: no bare NaN or Infinity (which Python's json accepts
    and other readers refuse) and no nesting deep enough to exhaust the stack; a ValueError says which."""

    def refuse(name: str) -> NoReturn:
        raise ValueError(f"holds the non-JSON constant {name}")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise ValueError("holds JSON nested too deeply") from None


def write_json_atomically(
    target: Path, payload: object, *, indent: int | None = 1, **options: Unpack[AtomicOptions]
) -> None:
    write_text_atomically(target, strict_json(payload, indent=indent), **options)


def write_sorted_json_atomically(target: Path, payload: object) -> None:
    """Python's JSON, keys sorted, indent 2, NaN kept, creating the folder: the build's work files and the provenance
    beside a probe or pairs file. Only this tool reads them back; the build hashes their bytes, so this format stays
    (a change would re-run every later stage), and an evaluation's NaN must read back as a float, not as null."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(target, json.dumps(payload, indent=2, sort_keys=True, default=str))


def strict_json(payload: object, indent: int | None = None) -> str:
    """JSON that any parser reads: NaN and ±Infinity (not JSON) written as null, numpy values and paths as plain
    ones, text as UTF-8 (a lone surrogate, which UTF-8 cannot hold, as its escape)."""
    return json.dumps(_finite(payload), ensure_ascii=False, indent=indent, allow_nan=False, default=str)


def _finite(value: object) -> object:
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0):
        value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def write_failure_message(error: BaseException, target: Path, advice: str) -> str | None:
    """One line for an exception that is a failed write (a full disk, a file-size limit, no permission), or None.
    Besides OSError, libraries fold the failure into their own exceptions: safetensors' SafetensorError keeps the
    errno in its text ("Os { code: 28, ..."), torch's zip writer says only "file write failed"."""
    seen = None if isinstance(error, UserError) else error  # already one line
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _WRITE_FAILURES:
            return _describe(seen, target, advice)
        found = _FOLDED_ERRNO.search(str(seen)) if not isinstance(seen, OSError) else None
        if found and int(found.group(1)) in _WRITE_FAILURES:
            code = int(found.group(1))
            return _describe(OSError(code, os.strerror(code)), target, advice)
        if not isinstance(seen, OSError) and "file write failed" in str(seen):
            return f"could not write {target} (file write failed: a full disk or a file-size limit): {advice}"
        seen = seen.__cause__ or seen.__context__
    return None


_FOLDED_ERRNO = re.compile(r"(?:\bcode: |os error |\[Errno )(\d+)")


def _describe(error: OSError, target: Path, advice: str) -> str:
    if error.errno in _NO_SPACE:
        return f"no space left to write {target} ({error.strerror}): free some space or {advice}"
    if error.errno in _NOT_ALLOWED:
        return f"cannot write {target} ({error.strerror}): {advice}"
    return f"could not write {target} ({error.strerror or error}): {advice}"


def _replace_folder(temporary: Path, target: Path) -> None:
    """Folders cannot be renamed over a non-empty folder: move the old one aside first, then drop it."""
    old = temporary_path(target.with_name(f"{target.name}.old"))
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
