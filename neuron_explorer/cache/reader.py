"""Read-only access to a cache file, as polars DataFrames.

The reader never holds the file open for writing and opens it without HDF5 file locks, so a file can be
explored while a job writes a new version of it (writers rename a finished file into place).
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import polars as pl

from neuron_explorer.errors import UserError

from . import layout, schema
from .atomic import parse_json

GROUP_DTYPE = pl.Enum(list(schema.GROUP_NAMES))
FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    architecture: str
    n_layers: int
    d_mlp: int
    d_model: int
    n_prompts: int
    created: str
    schema_version: int
    package_version: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp


@dataclass(frozen=True)
class ClusterTree:
    linkage: FloatArray  # scipy linkage matrix, (k-1, 4)
    leaf_order: IntArray  # positions into layer/neuron, in dendrogram order
    layer: IntArray
    neuron: IntArray
    label: IntArray  # flat cluster label at the stored cut, 1-based
    attrs: dict[str, Any]


@dataclass(frozen=True)
class HeldOutPrompts:
    """Prompts that `compute` kept aside for patch runs: nothing in the cache was computed from them."""

    texts: list[str]
    source_indices: IntArray  # their positions in the loaded prompt source (0-based)
    attrs: dict[str, Any]  # source, rule, fraction, sha256, n


def open_cache_file(path: str | Path) -> h5py.File:
    """Open and validate a cache file, turning every way it can be wrong into one clear UserError.

    Every command that reads a cache (the explorer, `patch`, `lab`) opens it here, so each refuses the same files:
    not a regular file (a FIFO would hang), a foreign or unfinished file, the wrong structure, storage outside the
    file (external raw storage, external or soft links, virtual datasets: a cache that would make the tool read
    other files), and values no cache holds (`_value_problem`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; make one with `neuron-explorer compute -o {path}`")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a cache file: pass the .h5 file inside it")
    if not stat.S_ISREG(path.stat().st_mode):
        raise UserError(f"{path} is not a regular file (a pipe or a device): pass a cache file")
    try:
        handle = h5py.File(path, "r", locking=False)
    except OSError as error:
        raise UserError(
            f"{path} is not a readable HDF5 file (corrupt, truncated or another format): "
            f"recompute it with `neuron-explorer compute`"
        ) from error
    try:
        problem = _header_problem(handle)
        if problem is None:
            damage = _storage_problem(handle) or _structure_problem(handle) or _value_problem(handle, path)
            problem = damage and f"is damaged ({damage}): recompute it with `neuron-explorer compute`"
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as error:
        problem = (
            f"is damaged ({type(error).__name__}: {_first_line(error)}): recompute it with `neuron-explorer compute`"
        )
    if problem:
        handle.close()
        raise UserError(f"{path} {problem}")
    return handle


def _header_problem(handle: h5py.File) -> str | None:
    """The format mark, the schema version and the `complete` flag, as a sentence that follows the file's name."""
    attrs = handle.attrs
    if attrs.get(layout.FORMAT) != schema.FORMAT_NAME:
        return (
            f"is an HDF5 file but not a neuron-explorer cache (no '{schema.FORMAT_NAME}' format mark): open a "
            f"file written by `neuron-explorer compute`"
        )
    version = attrs.get(layout.SCHEMA_VERSION, -1)
    if not isinstance(version, (int, np.integer)):
        return f"has a schema version that is not a number ({version!r}): recompute it"
    version = int(version)
    if version > schema.SCHEMA_VERSION:
        return (
            f"uses cache schema {version}, newer than the {schema.SCHEMA_VERSION} this neuron-explorer reads: "
            f"upgrade neuron-explorer"
        )
    if version < 1:
        return f"has an unknown cache schema version {version}: recompute it"
    if version < schema.SCHEMA_VERSION:
        fixed = "; ".join(change for number, change in schema.SCHEMA_CHANGES.items() if number > version)
        return (
            f"was written by an older neuron-explorer (cache schema {version}), whose {fixed}: recompute it "
            f"with `neuron-explorer compute`"
        )
    if not bool(attrs.get(layout.COMPLETE, False)):
        return "is incomplete (the run that wrote it did not finish): rerun `neuron-explorer compute`"
    return None


def _storage_problem(handle: h5py.File) -> str | None:
    """A link, or a dataset whose bytes live outside this file or need a filter HDF5 does not build in: reading
    them would read another file (or hang on a FIFO), or load a plugin."""
    found: list[str] = []

    def visit(name: str, link: object) -> bool | None:
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            found.append(f"/{name} is a link ({type(link).__name__}), which no cache holds")
            return True
        return None

    handle.visititems_links(visit)
    if found:
        return found[0]
    datasets: list[h5py.Dataset] = []
    handle.visititems(lambda name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
    for dataset in datasets:
        if dataset.external:
            return f"{dataset.name} keeps its values in another file ({dataset.external[0][0]!r})"
        if dataset.is_virtual:
            return f"{dataset.name} is a virtual dataset that reads other files"
        plist = dataset.id.get_create_plist()
        filters = {plist.get_filter(index)[0] for index in range(plist.get_nfilters())}
        if filters - BUILT_IN_FILTERS:
            return f"{dataset.name} needs HDF5 filter {min(filters - BUILT_IN_FILTERS)}, which no cache uses"
    return None


# HDF5's own filters and h5py's LZF: the only ones a cache may use (anything else would load a plugin).
BUILT_IN_FILTERS = {
    h5py.h5z.FILTER_DEFLATE,
    h5py.h5z.FILTER_SHUFFLE,
    h5py.h5z.FILTER_FLETCHER32,
    h5py.h5z.FILTER_SZIP,
    h5py.h5z.FILTER_NBIT,
    h5py.h5z.FILTER_SCALEOFFSET,
    h5py.h5z.FILTER_LZF,
}
# The most neurons a cache may declare: Llama-3-405B has 126 × 53,248 = 6.7 M; a file declaring far more is
# refused before anything allocates (n_layers × d_mlp bytes is read at once for the group codes alone).
MAX_NEURONS = 16_000_000
MAX_LAYERS = 1024
# Settings of the recording that the lab and patch runs reuse, and their bounds (compute accepts no more).
SETTING_BOUNDS = {"new_tokens": (1, 4096), "max_prompt_tokens": (1, 131072), "batch_size": (1, 65536)}


def _structure_problem(handle: h5py.File) -> str | None:
    """What keeps ``handle`` from matching the schema's declared attributes and datasets, or None."""
    missing = [name for name in schema.REQUIRED_ATTRIBUTES if name not in handle.attrs]
    if missing:
        return f"no root attribute {missing[0]}"
    for name in (layout.N_LAYERS, layout.D_MLP, layout.D_MODEL):
        value = handle.attrs[name]
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
            shown = value.item() if isinstance(value, np.generic) else value
            return f"root attribute {name} is {shown!r}, not a whole number of at least 1"
    n_layers, d_mlp = int(handle.attrs[layout.N_LAYERS]), int(handle.attrs[layout.D_MLP])
    sizes: dict[str | int | None, int] = {layout.N_LAYERS: n_layers, layout.D_MLP: d_mlp}
    if n_layers > MAX_LAYERS or n_layers * d_mlp > MAX_NEURONS:
        return (
            f"it declares {n_layers} × {d_mlp} neurons, more than any model has "
            f"(at most {MAX_LAYERS} layers and {MAX_NEURONS:,} neurons)"
        )
    for name, (kinds, shape) in schema.REQUIRED_DATASETS.items():
        try:
            dataset = handle.get(name)
        except (OSError, KeyError, RuntimeError) as error:
            return f"/{name} cannot be read: {error}"
        if not isinstance(dataset, h5py.Dataset):
            return f"no dataset /{name}"
        if dataset.dtype.kind not in kinds:
            return f"/{name} holds {dataset.dtype}, not the expected kind of values"
        expected = tuple(sizes.get(size, size) for size in shape)
        if len(dataset.shape) != len(expected) or any(
            want is not None and have != want for have, want in zip(dataset.shape, expected)
        ):
            shown = tuple("any" if want is None else want for want in expected)
            return f"/{name} has shape {dataset.shape}, not {shown}"
    return None


def _value_problem(handle: h5py.File, path: Path) -> str | None:
    """Values no cache holds, which would crash or hang a screen or command later: group codes outside the eight
    groups, a per-neuron array whose chunks were never written (a small file declaring huge arrays), attributes
    that should be JSON and are not, and provenance that is not an object or records impossible settings."""
    n_neurons = int(handle.attrs[layout.N_LAYERS]) * int(handle.attrs[layout.D_MLP])
    if path.stat().st_size < n_neurons:  # every cache stores far more than a byte per neuron
        return f"it declares {n_neurons:,} neurons but holds only {path.stat().st_size:,} bytes"
    codes = handle[layout.NEURON_GROUP][()]
    if codes.size and (codes.min() < 0 or codes.max() >= len(schema.GROUP_NAMES)):
        return f"/{layout.NEURON_GROUP} holds codes outside 0–{len(schema.GROUP_NAMES) - 1}"
    provenance = _json_attribute(handle.attrs.get(layout.PROVENANCE, "{}"))
    if not isinstance(provenance, dict):
        return "the provenance attribute is not a JSON object"
    for key in ("base", "tuned", "settings", "probe", "prompts"):
        if key in provenance and not isinstance(provenance[key], dict):
            return f"the provenance's '{key}' is not a JSON object"
    for key in ("base", "tuned"):
        spec = provenance.get(key, {}).get("spec")
        if spec is not None and not isinstance(spec, str):
            return f"the provenance's {key} model spec is not a string"
    settings = provenance.get("settings", {})
    for key, (low, high) in SETTING_BOUNDS.items():
        value = settings.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            return f"the provenance records {key} = {value!r}, outside {low}–{high}"
    objects: list[h5py.HLObject] = [handle]
    handle.visititems(lambda name, item: objects.append(item))
    for item in objects:
        if layout.COLUMNS in item.attrs:
            columns = _json_attribute(item.attrs[layout.COLUMNS])
            if not (isinstance(columns, list) and all(isinstance(column, str) for column in columns)):
                return f"{item.name}'s columns attribute is not a JSON list of names"
    return None


def _json_attribute(value: object) -> object:
    """An attribute holding JSON, decoded; a ValueError if it is not JSON text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"an attribute that should hold JSON text holds {type(value).__name__}")
    try:
        return parse_json(value)
    except ValueError as error:
        raise ValueError(f"an attribute {error}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


# `CacheReader.top_tokens`' columns: one row per (model, direction, rank) of a neuron's value-vector tokens
TOKEN_TABLE_SCHEMA = {
    "model": pl.Utf8,
    "direction": pl.Utf8,
    "rank": pl.Int32,
    "token_id": pl.Int32,
    "token": pl.Utf8,
    "score": pl.Float32,
}


class CacheReader:
    """Polars views of one cache file. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = open_cache_file(self.path)
        attrs = self.file.attrs
        provenance = _json_attribute(attrs.get(layout.PROVENANCE, "{}"))
        assert isinstance(provenance, dict)  # open_cache_file refused a file whose provenance is not an object
        n_prompts = len(self.file[layout.PROMPT_TEXT]) if layout.PROMPT_TEXT in self.file else 0
        self.info = CacheInfo(
            path=self.path,
            architecture=str(attrs[layout.ARCHITECTURE]),
            n_layers=int(attrs[layout.N_LAYERS]),
            d_mlp=int(attrs[layout.D_MLP]),
            d_model=int(attrs[layout.D_MODEL]),
            n_prompts=n_prompts,
            created=str(attrs[layout.CREATED]),
            schema_version=int(attrs[layout.SCHEMA_VERSION]),
            package_version=str(attrs.get(layout.PACKAGE_VERSION, "")),
            provenance=provenance,
        )
        self._cluster_labels = self._dense_cluster_labels()
        self._vocab: npt.NDArray[np.object_] | None = None

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.file:
            self.file.close()

    def has(self, name: str) -> bool:
        return name in self.file

    # -- neurons ------------------------------------------------------------------------------------------
    def neurons(self, layer: int | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        """One row per neuron (one layer, or all layers): ids, group, cluster and the metrics of METHOD §2."""
        wanted = [c for c in (columns or schema.NEURON_COLUMNS) if c in self.file[layout.NEURONS]]
        rows = slice(None) if layer is None else slice(layer, layer + 1)
        n_layers = self.info.n_layers if layer is None else 1
        self._check_layer(layer)
        layers = np.repeat(np.arange(self.info.n_layers, dtype=np.int16)[rows], self.info.d_mlp)
        data = {
            "layer": layers,
            "neuron": np.tile(np.arange(self.info.d_mlp, dtype=np.int32), n_layers),
        }
        frame = pl.DataFrame(data)
        codes = self.file[layout.NEURON_GROUP][rows].ravel()
        cluster = self._cluster_labels[rows].ravel()
        extra = [
            pl.Series("group", codes).replace_strict(dict(enumerate(schema.GROUP_NAMES)), return_dtype=GROUP_DTYPE),
            pl.Series("cluster", cluster).replace(-1, None),
        ]
        extra += [pl.Series(name, self.file[layout.neuron_path(name)][rows].ravel()) for name in wanted]
        absent = [c for c in (columns or schema.NEURON_COLUMNS) if c in schema.NEURON_COLUMNS and c not in wanted]
        extra += [pl.Series(name, np.full(n_layers * self.info.d_mlp, np.nan, np.float32)) for name in absent]
        return frame.with_columns(extra)

    def neuron(self, layer: int, index: int) -> dict[str, float | str | None]:
        """Every stored metric of one neuron."""
        self._check_layer(layer)
        if not 0 <= index < self.info.d_mlp:
            raise UserError(f"neuron index {index} is out of range: layer {layer} has {self.info.d_mlp} neurons")
        group = self.file[layout.NEURONS]
        record: dict[str, float | str | None] = {
            name: float(group[name][layer, index]) for name in schema.NEURON_COLUMNS if name in group
        }
        record["group"] = schema.GROUP_NAMES[int(self.file[layout.NEURON_GROUP][layer, index])]
        label = int(self._cluster_labels[layer, index])
        record["cluster"] = None if label < 0 else label
        return {"layer": layer, "neuron": index, **record}

    def top_tokens(self, layer: int, index: int) -> pl.DataFrame:
        """The tokens a neuron's value vector promotes (top) and suppresses (bottom), for both models; empty for a
        neuron that `compute` left out (`lens_rule`; token id -1)."""
        self._check_layer(layer)
        if layout.neuron_path(schema.TOKEN_ARRAYS[0]) not in self.file:
            return pl.DataFrame(schema=TOKEN_TABLE_SCHEMA)
        vocab = self.vocab()
        parts = []
        for model in ("pre", "dpo"):
            for direction in ("top", "bottom"):
                ids = self.file[layout.neuron_path(f"{direction}_tokens_{model}")][layer, index]
                scores = self.file[layout.neuron_path(f"{direction}_scores_{model}")][layer, index]
                ids, scores = ids[ids >= 0], scores[ids >= 0]
                parts.append(
                    pl.DataFrame(
                        {
                            "model": [model] * len(ids),
                            "direction": [direction] * len(ids),
                            "rank": np.arange(1, len(ids) + 1, dtype=np.int32),
                            "token_id": ids.astype(np.int32),
                            "token": [vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in ids],
                            "score": scores.astype(np.float32),
                        }
                    )
                )
        return pl.concat(parts)

    def lens_rule(self) -> dict[str, Any]:
        """Which neurons `compute` took the value-vector tokens of (`rule` all or top, `top_n`, `by`, `computed`,
        `why`); caches written before the rule existed hold every neuron's."""
        stored = self.file[layout.NEURONS].attrs.get(layout.LENS_RULE)
        return json.loads(stored) if stored is not None else {"rule": "all", "top_n": None, "by": "every neuron"}

    def neuron_array(self, name: str) -> npt.NDArray[Any]:
        """The stored (n_layers, d_mlp) array of one neuron column (``schema.NEURON_COLUMNS``) or of the group codes."""
        if name not in (*schema.NEURON_COLUMNS, layout.GROUP_CODES) or layout.neuron_path(name) not in self.file:
            raise UserError(f"no neuron column '{name}': use one of {', '.join(schema.NEURON_COLUMNS)}")
        return np.asarray(self.file[layout.neuron_path(name)][:])

    def cluster_labels(self) -> npt.NDArray[np.int32] | None:
        """Each neuron's cluster label (n_layers, d_mlp), -1 outside the clustered neurons; None without clusters."""
        return self._cluster_labels if layout.CLUSTER_LABEL in self.file else None

    def vocab(self) -> npt.NDArray[np.object_]:
        if self._vocab is None:
            self._vocab = (
                self.file[layout.VOCAB].asstr()[:] if layout.VOCAB in self.file else np.array([], dtype=object)
            )
        return self._vocab

    def prompt_activations(self, layer: int, index: int) -> pl.DataFrame:
        """The neuron's mean activation on each prompt in both models, with the prompt text."""
        self._check_layer(layer)
        columns = {
            "prompt": np.arange(self.info.n_prompts, dtype=np.int32),
            "text": self.file[layout.PROMPT_TEXT].asstr()[:],
        }
        for model in ("pre", "dpo"):
            name = layout.prompt_acts_path(model)
            if name in self.file:
                columns[f"act_{model}"] = self.file[name][:, layer, index].astype(np.float32)
        frame = pl.DataFrame(columns)
        if {"act_pre", "act_dpo"} <= set(frame.columns):
            frame = frame.with_columns((pl.col("act_pre") - pl.col("act_dpo")).alias("act_shift"))
        return frame

    # -- layers, summaries, clusters ------------------------------------------------------------------------
    def layers(self) -> pl.DataFrame:
        """One row per layer: Σ Δ, its positive and negative parts, its firing and writing parts (NaN in a cache
        written before them), measured projections and identity residuals."""
        table = self.table(layout.LAYERS).with_columns(
            pl.Series("layer", np.arange(self.info.n_layers, dtype=np.int16))
        )
        contribution = self.file[layout.neuron_path("contribution")][:]
        terms = {
            name: self.file[layout.neuron_path(name)][:].astype(np.float64).sum(axis=1)
            if layout.neuron_path(name) in self.file
            else np.full(self.info.n_layers, np.nan)
            for name in ("activation_term", "weight_term")
        }
        return table.select("layer", pl.exclude("layer")).with_columns(
            pl.Series("sum_positive", np.where(contribution > 0, contribution, 0).sum(axis=1)),
            pl.Series("sum_negative", np.where(contribution < 0, contribution, 0).sum(axis=1)),
            *(pl.Series(f"sum_{name}", sums) for name, sums in terms.items()),
        )

    def layer_group_sums(self) -> pl.DataFrame:
        """Σ Δ per layer and group (long format), for the stacked per-layer plot."""
        contribution = self.file[layout.neuron_path("contribution")][:]
        codes = self.file[layout.NEURON_GROUP][:]
        # one pass over each layer (the overview's first paint waits for this: 2.29 M neurons for a 70B model)
        sums = np.stack(
            [
                np.bincount(layer_codes, weights=layer_values, minlength=len(schema.GROUP_NAMES))
                for layer_codes, layer_values in zip(codes, contribution)
            ]
        )
        return pl.DataFrame(
            {
                "layer": np.repeat(np.arange(self.info.n_layers, dtype=np.int16), len(schema.GROUP_NAMES)),
                "group": pl.Series(list(schema.GROUP_NAMES) * self.info.n_layers, dtype=GROUP_DTYPE),
                "sum_contribution": sums.ravel(),
            }
        )

    def table(self, name: str) -> pl.DataFrame:
        """A small stored table (``layout.SUMMARY``, ``CLUSTER_SUMMARY``, ``EVALUATION``, ``LAYERS``)."""
        if name not in self.file:
            raise UserError(f"{self.path} holds no '{name}' table: it was written without that step")
        group = self.file[name]
        order = _json_attribute(group.attrs.get(layout.COLUMNS, "[]")) or list(group)
        assert isinstance(order, list)  # open_cache_file refused a columns attribute that is not a list of names
        columns = {}
        for key in order:
            dataset = group[key]
            if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
                continue
            columns[key] = dataset.asstr()[:] if h5py.check_string_dtype(dataset.dtype) else dataset[:]
        return pl.DataFrame(columns)

    def attrs(self, name: str = layout.ROOT) -> dict[str, Any]:
        """Attributes of a group, JSON values decoded."""
        out = {}
        for key, value in self.file[name].attrs.items():
            if isinstance(value, str) and value[:1] in "[{":
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    def summary(self) -> dict[str, Any]:
        """Headline scalars: Σ positive Δ, net Δ, the top-128 toxic neurons' share, counts."""
        return {key: value for key, value in self.attrs(layout.SUMMARY).items() if key != layout.COLUMNS}

    def group_summary(self) -> pl.DataFrame:
        """Per group: count, Σ Δ and shares (v3 and v1; see docs/cache-format.md)."""
        return self.table(layout.SUMMARY)

    def clusters(self) -> pl.DataFrame:
        return self.table(layout.CLUSTER_SUMMARY)

    def cluster_tree(self) -> ClusterTree | None:
        if layout.CLUSTERS not in self.file:
            return None
        group = self.file[layout.CLUSTERS]
        return ClusterTree(
            linkage=group["linkage"][:],
            leaf_order=group["leaf_order"][:],
            layer=group["layer"][:],
            neuron=group["neuron"][:],
            label=group["label"][:],
            attrs=self.attrs(layout.CLUSTERS),
        )

    def differences(self) -> dict[str, dict[str, Any]]:
        """Where the pair differs on any text (``schema.DIFFERENCE_ARRAYS``), per source present: the arrays and
        the attributes (n_tokens, kl_mean, ...). Empty for caches written without it."""
        found = {}
        for source in schema.DIFFERENCE_SOURCES:
            name = layout.difference_path(source)
            if name in self.file:
                group = self.file[name]
                found[source] = {
                    "arrays": {key: group[key][:] for key in schema.DIFFERENCE_ARRAYS if key in group},
                    "attrs": {k: v for k, v in self.attrs(name).items() if k != layout.COLUMNS},
                }
        return found

    def dynamics(self) -> dict[str, Any] | None:
        """The checkpoint series (``schema.DYNAMICS_ARRAYS`` and the attribute ``steps``), or None without one."""
        if layout.DYNAMICS not in self.file:
            return None
        group = self.file[layout.DYNAMICS]
        return {
            **{name: group[name][:] for name in schema.DYNAMICS_ARRAYS if name in group},
            "steps": self.attrs(layout.DYNAMICS).get(layout.DYNAMICS_STEPS, []),
        }

    def neuron_dynamics(self, layer: int, index: int) -> tuple[list[str], FloatArray] | None:
        """One neuron's Δ at each step of the checkpoint series (the final model last), or None without one."""
        self._check_layer(layer)
        if layout.DYNAMICS not in self.file:
            return None
        values = np.asarray(self.file[layout.dynamics_path("contribution")][:, layer, index], dtype=np.float64)
        return list(self.attrs(layout.DYNAMICS).get(layout.DYNAMICS_STEPS, [])), values

    def probe_direction(self) -> FloatArray:
        return np.asarray(self.file[layout.PROBE_DIRECTION][:])

    # -- prompts ---------------------------------------------------------------------------------------------
    def prompt_texts(self) -> list[str]:
        """The statistics prompts: those both models were recorded on."""
        return list(self.file[layout.PROMPT_TEXT].asstr()[:]) if layout.PROMPT_TEXT in self.file else []

    def patch_prompts(self) -> HeldOutPrompts | None:
        """The held-out prompts for patch runs, or None when compute kept none (``--patch-holdout 0``, older caches)."""
        if layout.PATCH_PROMPTS not in self.file:
            return None
        table = self.table(layout.PATCH_PROMPTS)
        attrs = {key: value for key, value in self.attrs(layout.PATCH_PROMPTS).items() if key != layout.COLUMNS}
        return HeldOutPrompts(
            texts=table["text"].to_list(), source_indices=table["source_index"].to_numpy(), attrs=attrs
        )

    # -- helpers ---------------------------------------------------------------------------------------------
    def _check_layer(self, layer: int | None) -> None:
        if layer is not None and not 0 <= layer < self.info.n_layers:
            raise UserError(f"layer {layer} is out of range: the model has layers 0 to {self.info.n_layers - 1}")

    def _dense_cluster_labels(self) -> npt.NDArray[np.int32]:
        labels = np.full((self.info.n_layers, self.info.d_mlp), -1, dtype=np.int32)
        if layout.CLUSTER_LABEL in self.file:
            group = self.file[layout.CLUSTERS]
            labels[group["layer"][:], group["neuron"][:]] = group["label"][:]
        return labels


def neuron_id(layer: int, index: int) -> str:
    return f"L{layer}/N{index}"


def parse_neuron_id(text: str) -> tuple[int, int]:
    """Parse ``L12/N345`` (also ``12/345`` or ``L12N345``) into (layer, index)."""
    cleaned = text.strip().upper().replace("L", "").replace("N", "/").replace("//", "/")
    try:
        layer, index = (int(part) for part in cleaned.split("/") if part)
    except ValueError:
        raise UserError(f"'{text}' is not a neuron id: write it as L<layer>/N<index>, e.g. L12/N345") from None
    return layer, index
