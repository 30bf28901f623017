"""The mutable things that live beside an immutable cache file: named neuron sets and patching runs.

``FILE.h5`` keeps its annotations in the sidecar folder ``FILE.h5.annotations/``: ``sets/<name>.json`` and
``runs/<run_id>.json``. Every write goes through `atomic.atomic_path`, so a reader never sees half a file; every
read tolerates a missing folder (a cache nobody annotated yet) and skips, with a one-line note, a record that is
not one (bad JSON, not an object, missing or mistyped fields).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, SupportsInt, TypeVar

from neuron_explorer.errors import UserError

from .atomic import nearest_folder, parse_json, sweep_stale_temporaries, write_error, write_json_atomically
from .schema import SIDECAR_SUFFIX

SET_NAME_PATTERN = re.compile(r"[\w+↑↓-][\w.+↑↓-]{0,63}")
BASELINE_KEY_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,128}")  # a baseline's file name: never a path
MAX_RECORD_BYTES = 256 << 20  # a record larger than this is not one of ours (and would fill the memory)
_Record = TypeVar("_Record")


@dataclass(frozen=True)
class NeuronSet:
    name: str
    created: str
    description: str
    neurons: list[tuple[int, int]]


@dataclass(frozen=True)
class PatchRun:
    run_id: str
    created: str
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)  # each {prompt, base, patched, dpo}


def sidecar_dir(cache_path: str | Path) -> Path:
    return Path(str(cache_path) + SIDECAR_SUFFIX)


# -- neuron sets ----------------------------------------------------------------------------------------------
def check_set_name(name: str) -> str:
    """Set names become file names, so they are limited to letters, digits and ``. _ - + ↑ ↓``."""
    name = name.strip()
    if not SET_NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"'{name}' is not a usable set name: use up to 64 letters, digits, '.', '_', '-', '+', "
            f"'↑' or '↓', not starting with '.'"
        )
    return name


def save_set(
    cache_path: str | Path, name: str, neurons: Iterable[tuple[SupportsInt, SupportsInt]], description: str = ""
) -> NeuronSet:
    """Store (or replace) a named set of (layer, index) pairs atomically; return it."""
    name = check_set_name(name)
    pairs = sorted({(int(layer), int(index)) for layer, index in neurons})
    neuron_set = NeuronSet(
        name=name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        description=description,
        neurons=pairs,
    )
    payload = {
        "name": name,
        "created": neuron_set.created,
        "description": description,
        "neurons": [list(pair) for pair in pairs],
    }
    write_json_atomically(_writable(cache_path, "sets") / f"{name}.json", payload)
    return neuron_set


def list_sets(cache_path: str | Path, problems: list[str] | None = None) -> list[NeuronSet]:
    """Every readable stored set, by name; a file that is not a set is skipped (described in ``problems``)."""
    return _records(cache_path, "sets", lambda stem, data: _neuron_set(data), problems)


def load_set(cache_path: str | Path, name: str) -> NeuronSet:
    path = sidecar_dir(cache_path) / "sets" / f"{check_set_name(name)}.json"
    try:
        return _neuron_set(read_record(path))
    except FileNotFoundError:
        raise UserError(f"no neuron set named '{name}' beside {cache_path}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a readable neuron set ({error}): delete it or save the set again") from None


def delete_set(cache_path: str | Path, name: str) -> None:
    path = sidecar_dir(cache_path) / "sets" / f"{check_set_name(name)}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        raise UserError(f"no neuron set named '{name}' beside {cache_path}") from None


def _neuron_set(data: object) -> NeuronSet:
    data = _require(data, {"name": str, "neurons": list})
    return NeuronSet(
        name=str(data["name"]),
        created=str(data.get("created", "")),
        description=str(data.get("description", "")),
        neurons=[(int(layer), int(index)) for layer, index in data["neurons"]],
    )


# -- patching runs (written by the patching step; read here) -------------------------------------------------
def list_runs(cache_path: str | Path, problems: list[str] | None = None) -> list[PatchRun]:
    """Every readable stored patching run, oldest first; a file that is not a run is skipped (described in
    ``problems``, for the explorer to show)."""
    runs = _records(cache_path, "runs", _patch_run, problems)
    return sorted(runs, key=lambda run: (run.created, run.run_id))


def load_run(cache_path: str | Path, run_id: str) -> PatchRun:
    path = sidecar_dir(cache_path) / "runs" / f"{run_id}.json"
    try:
        return _patch_run(run_id, read_record(path))
    except FileNotFoundError:
        raise UserError(f"no patching run '{run_id}' beside {cache_path}") from None
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"{path} is not a readable patching run ({error})") from None


def _patch_run(run_id: str, data: object) -> PatchRun:
    data = _require(data, {"created": str, "settings": dict, "metrics": dict})
    samples = data.get("samples", [])
    if not isinstance(samples, list) or not all(isinstance(sample, dict) for sample in samples):
        raise ValueError("'samples' is not a list of objects")
    baseline = data["settings"].get("baseline")
    if baseline is not None and not (isinstance(baseline, str) and BASELINE_KEY_PATTERN.fullmatch(baseline)):
        raise ValueError("its 'baseline' is not a baseline's name")
    return PatchRun(
        run_id=str(data.get("run_id", run_id)),
        created=data["created"],
        settings=dict(data["settings"]),
        metrics=dict(data["metrics"]),
        samples=[dict(sample) for sample in samples],
    )


# -- reading and writing records -------------------------------------------------------------------------------
def read_record(path: Path) -> object:
    """A record's JSON, read only from a regular file of sane size (a FIFO would hang the reader), as strict JSON
    (no NaN or Infinity) of sane depth; a ValueError (or OSError) says what is wrong."""
    info = os.stat(path)  # FileNotFoundError passes through: a missing record is not a damaged one
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("is not a regular file (a pipe or a device)")
    if info.st_size > MAX_RECORD_BYTES:
        raise ValueError(f"holds {info.st_size:,} bytes, more than a record does")
    with open(path, "rb") as stream:
        text = stream.read(MAX_RECORD_BYTES + 1).decode("utf-8")
    return parse_json(text)


def _require(data: object, fields: dict[str, type]) -> dict[str, Any]:
    """``data``, a JSON object holding each field with its type; a ValueError if it is not."""
    if not isinstance(data, dict):
        raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    for name, kind in fields.items():
        if not isinstance(data.get(name), kind):
            raise ValueError(f"lacks the field '{name}' ({kind.__name__})")
    return data


def _records(
    cache_path: str | Path, kind: str, parse: Callable[[str, object], _Record], problems: list[str] | None
) -> list[_Record]:
    """``parse(stem, data)`` of each ``kind/*.json`` record, by file name; the files it refuses are described in
    ``problems``."""
    folder = sidecar_dir(cache_path) / kind
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(parse(path.stem, read_record(path)))
        except (OSError, ValueError, KeyError, TypeError) as error:
            if problems is not None:
                problems.append(f"skipped {kind}/{path.name}: {error}")
    return records


def check_writable(cache_path: str | Path, kinds: Iterable[str] = ("runs", "baselines")) -> None:
    """Fail now, in one line, when records cannot be stored beside the cache (a read-only folder), rather than
    after a long evaluation: create and remove a file in the nearest existing folder of each ``kind`` (creating no
    folder, so that a run that fails later leaves nothing behind)."""
    for kind in kinds:
        existing = nearest_folder(sidecar_dir(cache_path) / kind)
        error = write_error(existing)
        if error is not None:
            raise UserError(
                f"cannot store {kind} beside {cache_path} in {existing} ({error.strerror or error}): "
                f"make that folder writable, or work on a copy of the cache in a folder you can "
                f"write"
            )


def _writable(cache_path: str | Path, kind: str) -> Path:
    """The sidecar folder ``kind``, created, with the temporaries of dead writers swept away."""
    folder = sidecar_dir(cache_path) / kind
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(folder)
    return folder


# -- writing patching runs and baselines (append-only: one new file per run, never a rewrite) ---------------------
RUN_ID_PATTERN = re.compile(r"[^\w.+-]+")


def new_run_id(label: str = "run") -> str:
    """``YYYYMMDD-HHMMSS-<label>-<4 hex>``: sorts by time, readable, and unique across concurrent runs."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = RUN_ID_PATTERN.sub("-", label.replace("↓", "down").replace("↑", "up")).strip("-")[:40] or "run"
    return f"{stamp}-{slug}-{os.urandom(2).hex()}"


def save_run(
    cache_path: str | Path,
    settings: dict[str, Any],
    metrics: dict[str, Any],
    samples: list[dict[str, Any]],
    *,
    label: str = "run",
) -> PatchRun:
    """Store a finished run as a new ``runs/<run_id>.json``.

    The JSON is written to a temporary file and hard-linked to its final name, which fails instead of replacing
    when the name exists: a run never overwrites another, and a reader never sees half a file. The cache file
    itself is never opened for writing.
    """
    folder = _writable(cache_path, "runs")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for _ in range(20):
        run_id = new_run_id(label)
        payload = {"run_id": run_id, "created": created, "settings": settings, "metrics": metrics, "samples": samples}
        try:
            write_json_atomically(folder / f"{run_id}.json", payload, replace=False)
        except FileExistsError:
            continue
        return _patch_run(run_id, payload)
    raise RuntimeError(f"could not find a free run id in {folder}")


def rename_run(cache_path: str | Path, run_id: str, label: str) -> PatchRun:
    """Give a stored run another label (the explorer's Runs screen): its record is rewritten atomically, with the
    label it had kept as ``settings.original_label``; nothing else changes."""
    run = load_run(cache_path, run_id)
    label = " ".join(label.split())
    if not label:
        raise UserError("a run's label cannot be empty")
    settings = {**run.settings, "label": label}
    settings.setdefault("original_label", run.settings.get("label", run_id))
    payload = {
        "run_id": run.run_id,
        "created": run.created,
        "settings": settings,
        "metrics": run.metrics,
        "samples": run.samples,
    }
    write_json_atomically(_writable(cache_path, "runs") / f"{run_id}.json", payload)
    return _patch_run(run_id, payload)


def delete_run(cache_path: str | Path, run_id: str) -> None:
    """Remove a stored run's record (its baseline stays: other runs may share it)."""
    try:
        (sidecar_dir(cache_path) / "runs" / f"{run_id}.json").unlink()
    except FileNotFoundError:
        raise UserError(f"no patching run '{run_id}' beside {cache_path}") from None


def load_baseline(cache_path: str | Path, key: str) -> dict[str, Any] | None:
    """A stored base/DPO evaluation for these settings (``baselines/<key>.json``), or None."""
    if not (isinstance(key, str) and BASELINE_KEY_PATTERN.fullmatch(key)):
        return None
    path = sidecar_dir(cache_path) / "baselines" / f"{key}.json"
    try:
        data = read_record(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_baseline(cache_path: str | Path, key: str, payload: dict[str, Any]) -> None:
    """Store the base/DPO evaluation of one settings key atomically (same key, same content: replacing is safe)."""
    write_json_atomically(_writable(cache_path, "baselines") / f"{key}.json", payload)
