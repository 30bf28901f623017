"""The mutable things that live beside an immutable cache file: named neuron sets and patching runs.

``FILE.h5`` keeps its annotations in the sidecar folder ``FILE.h5.annotations/``: ``sets/<name>.json`` and
``runs/<run_id>.json``. Every write goes to a temporary file that is renamed into place, so a reader never sees
half a file; every read tolerates a missing folder (a cache nobody annotated yet).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from neuron_explorer.errors import UserError

from .schema import SIDECAR_SUFFIX

SET_NAME_PATTERN = re.compile(r"[\w+↑↓-][\w.+↑↓-]{0,63}")


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
    settings: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # each {prompt, base, patched, dpo}


def sidecar_dir(cache_path: str | Path) -> Path:
    return Path(str(cache_path) + SIDECAR_SUFFIX)


# -- neuron sets ----------------------------------------------------------------------------------------------
def check_set_name(name: str) -> str:
    """Set names become file names, so they are limited to letters, digits and ``. _ - + ↑ ↓``."""
    name = name.strip()
    if not SET_NAME_PATTERN.fullmatch(name):
        raise UserError(f"'{name}' is not a usable set name: use up to 64 letters, digits, '.', '_', '-', '+', "
                        f"'↑' or '↓', not starting with '.'")
    return name


def save_set(cache_path: str | Path, name: str, neurons, description: str = "") -> NeuronSet:
    """Store (or replace) a named set of (layer, index) pairs atomically; return it."""
    name = check_set_name(name)
    pairs = sorted({(int(layer), int(index)) for layer, index in neurons})
    neuron_set = NeuronSet(name=name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           description=description, neurons=pairs)
    payload = {"name": name, "created": neuron_set.created, "description": description,
               "neurons": [list(pair) for pair in pairs]}
    _write_json_atomically(sidecar_dir(cache_path) / "sets" / f"{name}.json", payload)
    return neuron_set


def list_sets(cache_path: str | Path) -> list[NeuronSet]:
    """Every readable stored set, by name; files that do not parse are skipped, not fatal."""
    folder = sidecar_dir(cache_path) / "sets"
    sets = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            sets.append(_neuron_set(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sets


def load_set(cache_path: str | Path, name: str) -> NeuronSet:
    path = sidecar_dir(cache_path) / "sets" / f"{check_set_name(name)}.json"
    try:
        return _neuron_set(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"no neuron set named '{name}' beside {cache_path}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a readable neuron set ({error}): delete it or save the set again") from None


def delete_set(cache_path: str | Path, name: str) -> None:
    path = sidecar_dir(cache_path) / "sets" / f"{check_set_name(name)}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        raise UserError(f"no neuron set named '{name}' beside {cache_path}") from None


def _neuron_set(data: dict) -> NeuronSet:
    return NeuronSet(name=str(data["name"]), created=str(data.get("created", "")),
                     description=str(data.get("description", "")),
                     neurons=[(int(layer), int(index)) for layer, index in data["neurons"]])


# -- patching runs (written by the patching step; read here) -------------------------------------------------
def list_runs(cache_path: str | Path) -> list[PatchRun]:
    """Every readable stored patching run, oldest first."""
    folder = sidecar_dir(cache_path) / "runs"
    runs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            runs.append(_patch_run(path.stem, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(runs, key=lambda run: (run.created, run.run_id))


def load_run(cache_path: str | Path, run_id: str) -> PatchRun:
    path = sidecar_dir(cache_path) / "runs" / f"{run_id}.json"
    try:
        return _patch_run(run_id, json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"no patching run '{run_id}' beside {cache_path}") from None
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} is not a readable patching run ({error})") from None


def _patch_run(run_id: str, data: dict) -> PatchRun:
    samples = [dict(sample) for sample in data.get("samples", [])]
    return PatchRun(run_id=str(data.get("run_id", run_id)), created=str(data.get("created", "")),
                    settings=dict(data.get("settings", {})), metrics=dict(data.get("metrics", {})), samples=samples)


def _write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, ensure_ascii=False, indent=1)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- writing patching runs and baselines (append-only: one new file per run, never a rewrite) ---------------------
RUN_ID_PATTERN = re.compile(r"[^\w.+-]+")


def new_run_id(label: str = "run") -> str:
    """``YYYYMMDD-HHMMSS-<label>-<4 hex>``: sorts by time, readable, and unique across concurrent runs."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = RUN_ID_PATTERN.sub("-", label.replace("↓", "down").replace("↑", "up")).strip("-")[:40] or "run"
    return f"{stamp}-{slug}-{os.urandom(2).hex()}"


def save_run(cache_path: str | Path, settings: dict, metrics: dict, samples: list[dict], *,
             label: str = "run") -> PatchRun:
    """Store a finished run as a new ``runs/<run_id>.json``.

    The JSON is written to a temporary file and hard-linked to its final name, which fails instead of replacing
    when the name exists: a run never overwrites another, and a reader never sees half a file. The cache file
    itself is never opened for writing.
    """
    folder = sidecar_dir(cache_path) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for _ in range(20):
        run_id = new_run_id(label)
        payload = {"run_id": run_id, "created": created, "settings": settings, "metrics": metrics,
                   "samples": samples}
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{run_id}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(payload, stream, ensure_ascii=False, indent=1, default=_json_default)
                stream.flush()
                os.fsync(stream.fileno())
            try:
                os.link(temporary, folder / f"{run_id}.json")
            except FileExistsError:
                continue
            return _patch_run(run_id, payload)
        finally:
            Path(temporary).unlink(missing_ok=True)
    raise RuntimeError(f"could not find a free run id in {folder}")


def load_baseline(cache_path: str | Path, key: str) -> dict | None:
    """A stored base/DPO evaluation for these settings (``baselines/<key>.json``), or None."""
    path = sidecar_dir(cache_path) / "baselines" / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_baseline(cache_path: str | Path, key: str, payload: dict) -> None:
    """Store the base/DPO evaluation of one settings key atomically (same key, same content: replacing is safe)."""
    _write_json_atomically(sidecar_dir(cache_path) / "baselines" / f"{key}.json",
                           json.loads(json.dumps(payload, default=_json_default)))


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")

