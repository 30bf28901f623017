"""Neuron sets for interventions: any union of groups, clusters, top-k by a metric, explicit ids and named sets.

A set is given as one or more specs (the `--set` option of `neuron-explorer patch`, repeatable; the union is
taken):

  group:TP↓            a group (also TP-down, TPdown; `reducing` = the four ↓ groups, `mirror` = the four ↑)
  cluster:3            a flat cluster of the cache's clustering
  top:128:cos_pre      the K largest by any neuron column; `bottom:K:COLUMN`; `top:K:|COLUMN|` by magnitude
  toxic:128            the "toxic neurons" baseline: top K by cos_pre (METHOD §3)
  toxic-active:128     the same among positively activated neurons (ā_pre > 0), the authors' other variant
  auroc:128            the K best toxicity detectors: largest AUROC of the activation for toxic against non-toxic
                       base continuations (AurA's ranking; METHOD §8)
  ids:L12/N345,L3/N7   explicit neuron ids
  set:NAME             a named set saved from the explorer (FILE.h5.annotations/sets/NAME.json)
  file:PATH            a JSON file: a saved set, or a list of [layer, index] pairs
  layer:5              every neuron of a layer
  all                  every neuron

Only numpy and the cache reader are needed here (no torch), so the command line can resolve sets cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.cache import layout, schema
from neuron_explorer.cache.reader import CacheReader, parse_neuron_id
from neuron_explorer.errors import UserError

SPEC_HELP = (
    "group:TP↓ | group:reducing | cluster:N | top:K:COLUMN | bottom:K:COLUMN | top:K:|COLUMN| | toxic:K | "
    "toxic-active:K | auroc:K | ids:L12/N345,... | set:NAME | file:PATH | layer:N | all"
)
ASCII_ARROWS = {"-down": "↓", "down": "↓", "_down": "↓", ".down": "↓", "-up": "↑", "up": "↑", "_up": "↑", ".up": "↑"}


@dataclass(frozen=True)
class NeuronSelection:
    """A sorted, duplicate-free array of (layer, index) pairs and the specs that chose it."""

    neurons: np.ndarray  # (n, 2) int64, sorted by layer then index
    specs: tuple[str, ...] = ()
    n_layers: int = 0
    d_mlp: int = 0
    parts: dict = field(default_factory=dict)  # spec -> number of neurons it chose alone

    @classmethod
    def from_pairs(cls, pairs, *, n_layers: int = 0, d_mlp: int = 0, specs: tuple[str, ...] = ()) -> NeuronSelection:
        array = np.asarray(list(pairs) if not isinstance(pairs, np.ndarray) else pairs, dtype=np.int64).reshape(-1, 2)
        array = np.unique(array, axis=0) if len(array) else array
        return cls(neurons=array, specs=specs, n_layers=n_layers, d_mlp=d_mlp)

    def __len__(self) -> int:
        return len(self.neurons)

    def by_layer(self) -> dict[int, np.ndarray]:
        """layer -> sorted neuron indices, only for layers that have some."""
        out: dict[int, np.ndarray] = {}
        if not len(self.neurons):
            return out
        layers = self.neurons[:, 0]
        for layer in np.unique(layers):
            out[int(layer)] = self.neurons[layers == layer, 1]
        return out

    def layer_counts(self) -> dict[int, int]:
        return {layer: len(indices) for layer, indices in self.by_layer().items()}

    def mask(self, n_layers: int, d_mlp: int) -> np.ndarray:
        mask = np.zeros((n_layers, d_mlp), dtype=bool)
        if len(self.neurons):
            mask[self.neurons[:, 0], self.neurons[:, 1]] = True
        return mask

    def describe(self) -> str:
        specs = " ∪ ".join(self.specs) or "explicit neurons"
        return f"{specs} ({len(self):,} neurons in {len(self.layer_counts())} layers)"

    def compact(self) -> dict[str, list[int]]:
        """{layer: [indices]} for JSON records."""
        return {str(layer): indices.tolist() for layer, indices in self.by_layer().items()}


def normalize_group(name: str) -> list[str]:
    """A group name, its ASCII spelling (TP-down, TPdown) or `reducing` / `mirror` -> group names."""
    text = name.strip()
    lowered = text.lower()
    if lowered in {"reducing", "down", "all-reducing", "four"}:
        return list(schema.REDUCING_GROUPS)
    if lowered in {"mirror", "mirrors", "up", "raising"}:
        return list(schema.MIRROR_GROUPS)
    for suffix, arrow in ASCII_ARROWS.items():
        if lowered.endswith(suffix) and len(text) - len(suffix) == 2:
            text = text[:2].upper() + arrow
            break
    if text[:2].upper() + text[2:] in schema.GROUP_NAMES:
        return [text[:2].upper() + text[2:]]
    raise UserError(
        f"no group '{name}': use one of {', '.join(schema.GROUP_NAMES)} (or TP-down, TP-up, reducing, mirror)"
    )


def resolve(reader: CacheReader, specs: list[str] | tuple[str, ...]) -> NeuronSelection:
    """The union of the neurons chosen by each spec (see the module docstring)."""
    if not specs:
        raise UserError(f"no neuron set given: pass --set SPEC ({SPEC_HELP})")
    info = reader.info
    chosen = np.zeros((info.n_layers, info.d_mlp), dtype=bool)
    parts = {}
    for spec in specs:
        mask = _resolve_one(reader, spec.strip())
        parts[spec] = int(mask.sum())
        chosen |= mask
    layers, indices = np.nonzero(chosen)
    neurons = np.stack([layers, indices], axis=1).astype(np.int64)
    return NeuronSelection(neurons=neurons, specs=tuple(specs), n_layers=info.n_layers, d_mlp=info.d_mlp, parts=parts)


def _column(reader: CacheReader, name: str) -> np.ndarray:
    if name not in schema.NEURON_COLUMNS:
        raise UserError(f"no neuron column '{name}': use one of {', '.join(schema.NEURON_COLUMNS)}")
    if not reader.has(layout.neuron_path(name)):
        raise UserError(
            f"{reader.path} has no '{name}' column (written before it existed): recompute it with "
            f"`neuron-explorer compute`"
        )
    return reader.neuron_array(name).astype(np.float64)


def _top(values: np.ndarray, k: int, *, largest: bool = True, eligible: np.ndarray | None = None) -> np.ndarray:
    flat = values.ravel().copy()
    if eligible is not None:
        flat[~eligible.ravel()] = np.nan
    flat = flat if largest else -flat
    finite = np.isfinite(flat)
    k = min(k, int(finite.sum()))
    mask = np.zeros(values.size, dtype=bool)
    if k > 0:
        candidates = np.flatnonzero(finite)
        order = np.argsort(-flat[candidates], kind="stable")[:k]
        mask[candidates[order]] = True
    return mask.reshape(values.shape)


def _count(text: str, spec: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise UserError(f"'{spec}': '{text}' is not a whole number of neurons") from None
    if k < 1:
        raise UserError(f"'{spec}': the number of neurons must be at least 1")
    return k


def _resolve_one(reader: CacheReader, spec: str) -> np.ndarray:
    info = reader.info
    shape = (info.n_layers, info.d_mlp)
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "all" and not rest:
        return np.ones(shape, dtype=bool)
    if kind == "group":
        codes = reader.neuron_array("group")
        wanted = [schema.GROUP_NAMES.index(name) for name in normalize_group(rest)]
        return np.isin(codes, wanted)
    if kind == "cluster":
        try:
            cluster = int(rest)
        except ValueError:
            raise UserError(f"'{spec}': a cluster is a number, e.g. cluster:3") from None
        labels = reader.cluster_labels()
        if labels is None:
            raise UserError(f"'{spec}': {reader.path} holds no clusters")
        mask = labels == cluster
        if not mask.any():
            raise UserError(
                f"'{spec}': no cluster {cluster}; the cache has clusters "
                f"{', '.join(map(str, sorted(set(labels[labels >= 0].tolist()))))}"
            )
        return mask
    if kind in {"top", "bottom"}:
        k_text, _, column = rest.partition(":")
        k = _count(k_text, spec)
        if not column:
            raise UserError(f"'{spec}': name a column, e.g. top:128:cos_pre or top:100:|contribution|")
        absolute = column.startswith("|") and column.endswith("|")
        values = _column(reader, column.strip("|"))
        return _top(np.abs(values) if absolute else values, k, largest=kind == "top")
    if kind in {"toxic", "toxic-active"}:
        k = _count(rest or "128", spec)
        eligible = _column(reader, "act_pre") > 0 if kind == "toxic-active" else None
        return _top(_column(reader, "cos_pre"), k, eligible=eligible)
    if kind == "auroc":
        values = _column(reader, "auroc")
        if not np.isfinite(values).any():
            raise UserError(
                f"'{spec}': {reader.path} has no detector AUROC: the statistics prompts' base "
                f"continuations were all toxic or all clean"
            )
        return _top(values, _count(rest or "128", spec))
    if kind == "layer":
        try:
            layer = int(rest)
        except ValueError:
            raise UserError(f"'{spec}': a layer is a number, e.g. layer:5") from None
        if not 0 <= layer < info.n_layers:
            raise UserError(f"'{spec}': layer {layer} is out of range 0–{info.n_layers - 1}")
        mask = np.zeros(shape, dtype=bool)
        mask[layer] = True
        return mask
    if kind == "ids":
        pairs = [parse_neuron_id(text) for text in rest.split(",") if text.strip()]
        return _pairs_mask(pairs, shape, spec)
    if kind == "set":
        return _pairs_mask(sidecar.load_set(reader.path, rest).neurons, shape, spec)
    if kind == "file":
        return _pairs_mask(_pairs_from_file(Path(rest).expanduser()), shape, spec)
    raise UserError(f"'{spec}' is not a neuron set: use {SPEC_HELP}")


def _pairs_mask(pairs, shape: tuple[int, int], spec: str) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for layer, index in pairs:
        if not (0 <= layer < shape[0] and 0 <= index < shape[1]):
            raise UserError(
                f"'{spec}': neuron L{layer}/N{index} does not exist (layers 0–{shape[0] - 1}, neurons 0–{shape[1] - 1})"
            )
        mask[layer, index] = True
    if not mask.any():
        raise UserError(f"'{spec}' holds no neurons")
    return mask


def _pairs_from_file(path: Path) -> list[tuple[int, int]]:
    try:
        data = sidecar.read_record(path)  # a regular file of sane size and depth: /dev/zero or a FIFO would never end
    except FileNotFoundError:
        raise UserError(f"neuron-set file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a JSON neuron set ({error})") from None
    pairs = data.get("neurons", []) if isinstance(data, dict) else data
    try:
        if not isinstance(pairs, Iterable):
            raise TypeError(f"{type(pairs).__name__} is not a list")
        return [(int(layer), int(index)) for layer, index in pairs]
    except (TypeError, ValueError):
        raise UserError(f"{path}: expected a list of [layer, index] pairs or a saved set with 'neurons'") from None
