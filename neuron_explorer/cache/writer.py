"""Atomic writing of a cache file: everything goes to a temporary file beside the target, renamed on success.

A run killed halfway leaves only a hidden temporary (`atomic.temporary_path`), never a file that looks complete; the
next writer into the same folder removes such leftovers of dead processes (`atomic.sweep_stale_temporaries`).

HDF5 writes through Python callbacks (`_WriteOnceFailing`) and ignores any exception raised in them: a Ctrl-C that
landed there used to drop a write silently, and the damaged file was published. So nothing is ever raised into
HDF5 (an interrupt there is held and raised at the writer's next check), and before the rename the temporary is read
back and every dataset compared with a digest of what was written (`CacheWriter.verify`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import numpy.typing as npt

from neuron_explorer import __version__
from neuron_explorer.errors import UserError

from . import layout, schema
from .atomic import atomic_path, check_output_folder, sweep_stale_temporaries

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

_FLOAT_OPTS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_STR = h5py.string_dtype("utf-8")
SignalHandler = Callable[[int, FrameType | None], object] | int | None  # what signal.getsignal returns


class _WriteOnceFailing:
    """The file object HDF5 writes through. HDF5 crashes the process (SIGSEGV) when a write fails, at once or in its
    close, and ignores (prints and drops) any exception its callbacks raise, so it never sees a failure: the first
    failed write (a full disk, or an interrupt raised inside the write) is kept in ``error``, and from then on what
    HDF5 writes is held in memory, where its reads find it again (reading back unwritten bytes crashes it too).
    The writer raises ``error`` at its next check (`CacheWriter.check`, after each batch), so little is held."""

    def __init__(self, path: Path):
        self.raw = open(path, "w+b", buffering=0)
        self.error: BaseException | None = None
        self.held: list[tuple[int, bytes]] = []  # (offset, bytes) written after the failure, oldest first
        self.position = 0
        self.end = 0

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while self.error is None and len(view):
            try:
                written = os.pwrite(self.raw.fileno(), view, self.position + size - len(view))
            except BaseException as error:  # noqa: B036 -- raised into HDF5 it would be dropped with the bytes
                self.error = error
            else:
                view = view[written:]
        if len(view):
            self.held.append((self.position + size - len(view), bytes(view)))
        self.position += size
        self.end = max(self.end, self.position)
        return size

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), self.end - self.position))
        try:
            read = os.preadv(self.raw.fileno(), [target], self.position) if count else 0
        except BaseException as error:  # noqa: B036 -- as in write: HDF5 would drop it
            self.error, read = self.error or error, 0
        target[read:] = bytes(len(target) - read)
        for offset, data in self.held:
            start, stop = max(offset, self.position), min(offset + len(data), self.position + len(target))
            if start < stop:
                target[start - self.position : stop - self.position] = data[start - offset : stop - offset]
        self.position += count
        return count

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(max(0, self.end - self.position) if size < 0 else size)
        return bytes(buffer[: self.readinto(buffer)])

    def truncate(self, size: int) -> int:
        if self.error is None:
            try:
                os.ftruncate(self.raw.fileno(), size)
            except BaseException as error:  # noqa: B036 -- as in write
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


_CALLBACKS = frozenset(member.__code__ for member in vars(_WriteOnceFailing).values() if callable(member))


def _inside_hdf5_callback(frame: FrameType | None) -> bool:
    """Whether ``frame`` (or a caller) is one of the stream's methods, which only HDF5 calls."""
    while frame is not None:
        if frame.f_code in _CALLBACKS:
            return True
        frame = frame.f_back
    return False


@contextmanager
def _interrupts_held_inside_hdf5(held: list[tuple[int, SignalHandler]]) -> Iterator[None]:
    """For the block, a SIGINT or SIGTERM that lands while HDF5 is calling the stream is appended to ``held`` (with
    the handler it would have met) instead of raising there (HDF5 would drop the exception and the write); anywhere else
    it acts at once, as
    KeyboardInterrupt for SIGINT and SystemExit(143) for SIGTERM, so that the temporary is removed on the way out.
    Only the main thread can install handlers; elsewhere the stream still never raises into HDF5."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, SignalHandler] = {
        number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)
    }

    def handle(number: int, frame: FrameType | None) -> None:
        if _inside_hdf5_callback(frame):
            held.append((number, previous[number]))
        else:
            deliver_signal(number, previous[number])

    for number in previous:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def deliver_signal(number: int, handler: SignalHandler) -> None:
    """What ``handler`` (the one the writer replaced) does with the signal, raised as an exception rather than a
    sudden death, so that the temporary is removed on the way out."""
    if callable(handler):
        handler(number, None)
    elif handler != signal.SIG_IGN:
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + number)


def _digest(values: npt.ArrayLike) -> str:
    """A digest of an array's shape and values (strings as their UTF-8 text), to compare the read-back with."""
    array = np.asarray(values)
    digest = hashlib.blake2b(repr(array.shape).encode(), digest_size=16)
    if array.dtype.kind in "OUS":
        digest.update("\x00".join(_text(value) for value in array.ravel().tolist()).encode("utf-8", "surrogatepass"))
    else:
        digest.update(array.dtype.str.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _text(value: object) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def storable_strings(values: Iterable[object]) -> npt.NDArray[np.object_]:
    """An object array of the strings with NUL written as the two characters \\0: HDF5 variable-length strings
    cannot hold NUL, and a model may well generate it."""
    return np.array([str(value).replace("\x00", "\\0") for value in values], dtype=object)


def write_columns(
    group: h5py.Group,
    columns: Mapping[str, npt.ArrayLike],
    chunk_rows: int | None = None,
    digests: dict[str, str] | None = None,
) -> None:
    """Write equal-length columns (numbers or strings) as one dataset each under ``group``, keeping their order;
    ``digests`` (dataset name -> digest) receives what each dataset should read back as."""
    group.attrs[layout.COLUMNS] = json.dumps(list(columns), ensure_ascii=False)
    for name, values in columns.items():
        if isinstance(values, (list, tuple)) and (not values or isinstance(values[0], str)):
            data, options = storable_strings(values), {"dtype": _STR}
        elif (array := np.asarray(values)).dtype.kind in "US":
            data, options = storable_strings(array.tolist()), {"dtype": _STR}
        elif array.size >= 1024:
            chunks = (min(len(array), chunk_rows or 65536),) + array.shape[1:] if array.ndim else None
            data, options = array, {"chunks": chunks, **_FLOAT_OPTS}
        else:
            data, options = array, {}
        dataset = group.create_dataset(name, data=data, **options)
        if digests is not None:
            digests[dataset.name] = _digest(data)


class CacheWriter:
    """Context manager that builds one cache file and moves it into place only if the body succeeds."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_layers: int,
        d_mlp: int,
        d_model: int,
        architecture: str,
        provenance: dict[str, Any],
    ) -> None:
        self.path = Path(path)
        self.n_layers, self.d_mlp, self.d_model = n_layers, d_mlp, d_model
        self.architecture = architecture
        self.provenance = provenance
        self.file: h5py.File | None = None
        self._stream: _WriteOnceFailing | None = None
        self._stack = ExitStack()
        # (signal, its handler) that landed inside HDF5, raised at the next check
        self._held_signals: list[tuple[int, SignalHandler]] = []
        self._digests: dict[str, str] = {}  # dataset name -> digest of the values written whole
        self._filled: list[str] = []  # datasets the caller fills piece by piece (prompt_activations)
        self._attributes: dict[tuple[str, str], object] = {}  # (object name, attribute) -> value written

    def __enter__(self) -> CacheWriter:
        check_output_folder(self.path)
        sweep_stale_temporaries(self.path.parent)
        with ExitStack() as stack:
            stack.enter_context(_interrupts_held_inside_hdf5(self._held_signals))
            temporary = stack.enter_context(atomic_path(self.path, advice="choose another -o path"))

            def verify_on_success(exc_type: type[BaseException] | None, *_: object) -> None:
                if exc_type is None:
                    self.verify(temporary)

            stack.push(verify_on_success)
            stream = self._stream = _WriteOnceFailing(temporary)
            stack.callback(self.check)
            stack.callback(stream.close)
            self.file = stack.enter_context(h5py.File(stream, "w", libver="latest", locking=False))
            self.write_attrs(
                {
                    layout.FORMAT: schema.FORMAT_NAME,
                    layout.SCHEMA_VERSION: schema.SCHEMA_VERSION,
                    layout.PACKAGE_VERSION: __version__,
                    layout.CREATED: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    layout.ARCHITECTURE: self.architecture,
                    layout.N_LAYERS: self.n_layers,
                    layout.D_MLP: self.d_mlp,
                    layout.D_MODEL: self.d_model,
                    layout.PROVENANCE: json.dumps(self.provenance, sort_keys=True, default=str),
                    layout.COMPLETE: False,
                }
            )
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the HDF5 file, then the stream, then verify and publish the temporary (or remove it, whatever
        failed)."""
        try:
            if exc_type is None:
                self.check()
                self.write_attrs({layout.COMPLETE: True})
        except BaseException as error:  # noqa: B036 -- the temporary goes with any failure, an interrupt too
            if not self._stack.__exit__(type(error), error, error.__traceback__):
                raise
        else:
            self._stack.__exit__(exc_type, exc, tb)

    def check(self) -> None:
        """Raise the first failed write (a full disk, an interrupt inside HDF5) or a held signal, if any: the engine
        calls it after each batch, so that a run stops soon after (the writer's close checks once more)."""
        if self._stream is not None and self._stream.error is not None:
            raise self._stream.error
        if self._held_signals:
            number, handler = self._held_signals[0]
            self._held_signals.clear()
            deliver_signal(number, handler)

    def verify(self, temporary: Path) -> None:
        """Read the closed temporary back: every attribute and every dataset written whole must equal what was
        written, and every chunk of a filled dataset must be stored. A difference is never published."""
        try:
            with h5py.File(temporary, "r", locking=False) as handle:
                for (name, key), value in self._attributes.items():
                    stored = handle[name].attrs.get(key)
                    if not np.array_equal(np.asarray(stored), np.asarray(value)):
                        raise OSError(f"attribute {key} of {name} reads back as {stored!r}")
                for name, digest in self._digests.items():
                    dataset = handle[name]
                    values = dataset.asstr()[()] if h5py.check_string_dtype(dataset.dtype) else dataset[()]
                    if _digest(values) != digest:
                        raise OSError(f"{name} reads back other values than were written")
                for name in self._filled:
                    dataset = handle[name]
                    expected = int(np.prod([-(-size // chunk) for size, chunk in zip(dataset.shape, dataset.chunks)]))
                    if dataset.id.get_num_chunks() != expected:
                        raise OSError(f"{name} holds {dataset.id.get_num_chunks()} of its {expected} chunks")
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            raise UserError(
                f"the cache written for {self.path} did not read back as written ({error}); nothing "
                f"was published: run the command again"
            ) from None

    def _opened(self) -> h5py.File:
        """The temporary's HDF5 file, which exists only inside the with block."""
        if self.file is None:
            raise RuntimeError("CacheWriter writes only inside its with block")
        return self.file

    # -- per-neuron and per-layer data -------------------------------------------------------------------
    def write_neuron_arrays(self, arrays: Mapping[str, npt.ArrayLike]) -> None:
        """(n_layers, d_mlp, ...) arrays, chunked one layer per chunk so that a layer reads in one go."""
        group = self._opened().require_group(layout.NEURONS)
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.shape[:2] != (self.n_layers, self.d_mlp):
                raise ValueError(f"{name}: shape {array.shape} is not (n_layers, d_mlp, ...)")
            dataset = group.create_dataset(name, data=array, chunks=(1,) + array.shape[1:], **_FLOAT_OPTS)
            self._digests[dataset.name] = _digest(array)

    def write_groups(self, codes: npt.NDArray[np.integer[Any]]) -> None:
        self.write_neuron_arrays({layout.GROUP_CODES: codes.astype(np.int8)})
        self.write_attrs({layout.GROUP_CODE_NAMES: schema.GROUP_NAMES}, layout.NEURON_GROUP)

    def write_layers(self, columns: Mapping[str, npt.ArrayLike]) -> None:
        write_columns(
            self._opened().require_group(layout.LAYERS),
            {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()},
            digests=self._digests,
        )

    # -- prompts, activations per prompt, vocabulary -----------------------------------------------------
    def write_prompts(self, columns: Mapping[str, npt.ArrayLike]) -> None:
        write_columns(self._opened().require_group(layout.PROMPTS), columns, digests=self._digests)

    def prompt_activations(self, model: str, n_prompts: int) -> h5py.Dataset:
        """A float16 (prompts, layers, d_mlp) dataset to fill batch by batch; one chunk holds one neuron block
        of one layer for up to 64 prompts, so "which prompts move this neuron" reads a thin column."""
        chunk = (min(n_prompts, 64), 1, min(self.d_mlp, 512))
        dataset = (
            self._opened()
            .require_group(layout.PROMPT_ACTS)
            .create_dataset(
                model, shape=(n_prompts, self.n_layers, self.d_mlp), dtype=np.float16, chunks=chunk, **_FLOAT_OPTS
            )
        )
        self._filled.append(dataset.name)
        return dataset

    def write_vocab(self, strings: list[str]) -> None:
        data = storable_strings(strings)
        self._digests[self._opened().create_dataset(layout.VOCAB, data=data, dtype=_STR).name] = _digest(data)

    # -- small tables and blobs --------------------------------------------------------------------------
    def write_table(
        self, name: str, columns: Mapping[str, npt.ArrayLike], attrs: Mapping[str, object] | None = None
    ) -> None:
        """A small table (summary, clusters, evaluation, ...) as one dataset per column under /name."""
        write_columns(self._opened().require_group(name), columns, digests=self._digests)
        self.write_attrs(attrs or {}, name)

    def write_array(self, name: str, array: npt.ArrayLike, attrs: Mapping[str, object] | None = None) -> None:
        array = np.asarray(array)
        self._digests[self._opened().create_dataset(name, data=array).name] = _digest(array)
        self.write_attrs(attrs or {}, name)

    def write_attrs(self, attrs: Mapping[str, object], name: str = layout.ROOT) -> None:
        """Attributes of the root, a table or an array; values other than numbers, booleans and strings are stored
        as JSON."""
        target = self._opened()[name].attrs
        for key, value in attrs.items():
            value = value if isinstance(value, (int, float, str, np.number, np.bool_)) else json.dumps(value)
            target[key] = value
            self._attributes[(self._opened()[name].name, key)] = value
