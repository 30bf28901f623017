"""Atomic writing of a cache file: everything goes to a temporary file beside the target, renamed on success.

A run killed halfway leaves only a hidden ``.NAME.PID.tmp`` file, never a file that looks complete; the next
writer into the same folder removes such leftovers of dead processes (`atomic.sweep_stale_temporaries`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np

from neuron_explorer import __version__
from neuron_explorer.errors import UserError

from . import schema
from .atomic import atomic_path, sweep_stale_temporaries

_FLOAT_OPTS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_STR = h5py.string_dtype("utf-8")


class _WriteOnceFailing:
    """The file object HDF5 writes through. HDF5 crashes the process (SIGSEGV) when a write fails, at once or in its
    close, so it never sees a failure: the first failed write (a full disk) is kept in ``error``, and from then on
    what HDF5 writes is held in memory, where its reads find it again (reading back unwritten bytes crashes it too).
    The writer raises ``error`` at its next check (`CacheWriter.check`, after each batch), so little is held."""

    def __init__(self, path: Path):
        self.raw = open(path, "w+b", buffering=0)
        self.error: OSError | None = None
        self.held: list[tuple[int, bytes]] = []  # (offset, bytes) written after the failure, oldest first
        self.position = 0
        self.end = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while self.error is None and len(view):
            try:
                written = os.pwrite(self.raw.fileno(), view, self.position + size - len(view))
            except OSError as error:
                self.error = error
            else:
                view = view[written:]
        if len(view):
            self.held.append((self.position + size - len(view), bytes(view)))
        self.position += size
        self.end = max(self.end, self.position)
        return size

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), self.end - self.position))
        read = os.preadv(self.raw.fileno(), [target], self.position) if count else 0
        target[read:] = bytes(len(target) - read)
        for offset, data in self.held:
            start, stop = max(offset, self.position), min(offset + len(data), self.position + len(target))
            if start < stop:
                target[start - self.position:stop - self.position] = data[start - offset:stop - offset]
        self.position += count
        return count

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(max(0, self.end - self.position) if size < 0 else size)
        return bytes(buffer[:self.readinto(buffer)])

    def truncate(self, size: int) -> int:
        if self.error is None:
            try:
                os.ftruncate(self.raw.fileno(), size)
            except OSError as error:
                self.error = error
        self.end = size
        return size

    def flush(self) -> None:
        pass  # unbuffered: every write went to the operating system already (or is held)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = offset + {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.end}[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.held.clear()
        self.raw.close()


def storable_strings(values) -> np.ndarray:
    """An object array of the strings with NUL written as the two characters \\0: HDF5 variable-length strings
    cannot hold NUL, and a model may well generate it."""
    return np.array([str(value).replace("\x00", "\\0") for value in values], dtype=object)


def write_columns(group: h5py.Group, columns: dict, chunk_rows: int | None = None) -> None:
    """Write equal-length columns (numbers or strings) as one dataset each under ``group``, keeping their order."""
    group.attrs["columns"] = json.dumps(list(columns), ensure_ascii=False)
    for name, values in columns.items():
        if isinstance(values, (list, tuple)) and (not values or isinstance(values[0], str)):
            group.create_dataset(name, data=storable_strings(values), dtype=_STR)
            continue
        array = np.asarray(values)
        if array.dtype.kind in "US":
            group.create_dataset(name, data=storable_strings(array.tolist()), dtype=_STR)
        elif array.size >= 1024:
            chunks = (min(len(array), chunk_rows or 65536),) + array.shape[1:] if array.ndim else None
            group.create_dataset(name, data=array, chunks=chunks, **_FLOAT_OPTS)
        else:
            group.create_dataset(name, data=array)


class CacheWriter:
    """Context manager that builds one cache file and moves it into place only if the body succeeds."""

    def __init__(self, path: str | Path, *, n_layers: int, d_mlp: int, d_model: int, architecture: str,
                 provenance: dict):
        self.path = Path(path)
        self.n_layers, self.d_mlp, self.d_model = n_layers, d_mlp, d_model
        self.architecture = architecture
        self.provenance = provenance
        self.file: h5py.File | None = None
        self._stream: _WriteOnceFailing | None = None
        self._stack = ExitStack()

    def __enter__(self) -> "CacheWriter":
        if not self.path.parent.exists():
            raise UserError(f"output folder {self.path.parent} does not exist: create it or choose another -o path")
        sweep_stale_temporaries(self.path.parent)
        with ExitStack() as stack:
            temporary = stack.enter_context(atomic_path(self.path, advice="choose another -o path"))
            stream = self._stream = _WriteOnceFailing(temporary)
            stack.callback(self.check)
            stack.callback(stream.close)
            self.file = stack.enter_context(h5py.File(stream, "w", libver="latest", locking=False))
            attrs = self.file.attrs
            attrs["format"] = schema.FORMAT_NAME
            attrs["schema_version"] = schema.SCHEMA_VERSION
            attrs["package_version"] = __version__
            attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            attrs["architecture"] = self.architecture
            attrs["n_layers"], attrs["d_mlp"], attrs["d_model"] = self.n_layers, self.d_mlp, self.d_model
            attrs["provenance"] = json.dumps(self.provenance, sort_keys=True, default=str)
            attrs["complete"] = False
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Close the HDF5 file, then the stream, then publish the temporary (or remove it, whatever failed)."""
        if exc_type is None:
            self.file.attrs["complete"] = True
        self._stack.__exit__(exc_type, exc, tb)

    def check(self) -> None:
        """Raise the first failed write (a full disk), if any: the engine calls it after each batch, so that a run
        stops soon after the disk fills (the writer's close checks once more)."""
        if self._stream is not None and self._stream.error is not None:
            raise self._stream.error

    # -- per-neuron and per-layer data -------------------------------------------------------------------
    def write_neuron_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """(n_layers, d_mlp, ...) arrays, chunked one layer per chunk so that a layer reads in one go."""
        group = self.file.require_group("neurons")
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.shape[:2] != (self.n_layers, self.d_mlp):
                raise ValueError(f"{name}: shape {array.shape} is not (n_layers, d_mlp, ...)")
            group.create_dataset(name, data=array, chunks=(1,) + array.shape[1:], **_FLOAT_OPTS)

    def write_groups(self, codes: np.ndarray) -> None:
        self.write_neuron_arrays({"group": codes.astype(np.int8)})
        self.file["neurons/group"].attrs["names"] = json.dumps(schema.GROUP_NAMES, ensure_ascii=False)

    def write_layers(self, columns: dict[str, np.ndarray]) -> None:
        write_columns(self.file.require_group("layers"), {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()})

    # -- prompts, activations per prompt, vocabulary -----------------------------------------------------
    def write_prompts(self, columns: dict) -> None:
        write_columns(self.file.require_group("prompts"), columns)

    def prompt_activations(self, model: str, n_prompts: int) -> h5py.Dataset:
        """A float16 (prompts, layers, d_mlp) dataset to fill batch by batch; one chunk holds one neuron block
        of one layer for up to 64 prompts, so "which prompts move this neuron" reads a thin column."""
        chunk = (min(n_prompts, 64), 1, min(self.d_mlp, 512))
        return self.file.require_group("prompt_acts").create_dataset(
            model, shape=(n_prompts, self.n_layers, self.d_mlp), dtype=np.float16, chunks=chunk, **_FLOAT_OPTS)

    def write_vocab(self, strings: list[str]) -> None:
        self.file.create_dataset("vocab", data=storable_strings(strings), dtype=_STR)

    # -- small tables and blobs --------------------------------------------------------------------------
    def write_table(self, name: str, columns: dict, attrs: dict | None = None) -> None:
        """A small table (summary, clusters, evaluation, ...) as one dataset per column under /name."""
        write_columns(self.file.require_group(name), columns)
        self.write_attrs(attrs or {}, name)

    def write_array(self, name: str, array: np.ndarray, attrs: dict | None = None) -> None:
        self.file.create_dataset(name, data=np.asarray(array))
        self.write_attrs(attrs or {}, name)

    def write_attrs(self, attrs: dict, name: str = "/") -> None:
        """Attributes of the root, a table or an array; values other than numbers and strings are stored as JSON."""
        target = self.file[name].attrs
        for key, value in attrs.items():
            target[key] = value if isinstance(value, (int, float, str, np.number)) else json.dumps(value)
