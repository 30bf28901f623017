"""Atomic writing of a cache file: everything goes to a temporary file beside the target, renamed on success.

A run killed halfway leaves only a hidden ``.NAME.PID.tmp`` file, never a file that looks complete; the next
writer of the same target removes such leftovers of dead processes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import h5py
import numpy as np

from neuron_explorer import __version__
from neuron_explorer.errors import UserError

from . import schema

_FLOAT_OPTS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_STR = h5py.string_dtype("utf-8")


def temporary_path(target: Path, pid: int | None = None) -> Path:
    return target.with_name(f".{target.name}.{pid or os.getpid()}.tmp")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporary files that dead processes left beside ``target``; return what was removed."""
    removed = []
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        pid_text = leftover.name[len(target.name) + 2 : -len(".tmp")]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._tmp = temporary_path(self.path)

    def __enter__(self) -> "CacheWriter":
        if not self.path.parent.exists():
            raise UserError(f"output folder {self.path.parent} does not exist: create it or choose another -o path")
        remove_stale_temporaries(self.path)
        self.file = h5py.File(self._tmp, "w", libver="latest", locking=False)
        attrs = self.file.attrs
        attrs["format"] = schema.FORMAT_NAME
        attrs["schema_version"] = schema.SCHEMA_VERSION
        attrs["package_version"] = __version__
        attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        attrs["architecture"] = self.architecture
        attrs["n_layers"], attrs["d_mlp"], attrs["d_model"] = self.n_layers, self.d_mlp, self.d_model
        attrs["provenance"] = json.dumps(self.provenance, sort_keys=True, default=str)
        attrs["complete"] = False
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.file is not None
        if exc_type is None:
            self.file.attrs["complete"] = True
            self.file.close()
            os.replace(self._tmp, self.path)
        else:
            self.file.close()
            self._tmp.unlink(missing_ok=True)

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
        group = self.file.require_group(name)
        write_columns(group, columns)
        for key, value in (attrs or {}).items():
            group.attrs[key] = value if isinstance(value, (int, float, str, np.number)) else json.dumps(value)

    def write_array(self, name: str, array: np.ndarray, attrs: dict | None = None) -> None:
        dataset = self.file.create_dataset(name, data=np.asarray(array))
        for key, value in (attrs or {}).items():
            dataset.attrs[key] = value if isinstance(value, (int, float, str, np.number)) else json.dumps(value)
