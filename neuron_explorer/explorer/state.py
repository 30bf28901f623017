"""The app's state: the open cache, every neuron as one polars frame, and the current view of it.

The view is a layer (or all layers), filters and a sort; it is kept as an array of row positions into the
all-layer frame, so sorting and filtering never copy the frame and the table formats only the rows it shows.
The neuron table reads any `NeuronSource`: the Store's view, or a lab prompt's top neurons (`PromptNeurons`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.cache.atomic import atomic_path
from neuron_explorer.cache.reader import CacheReader, neuron_id, parse_neuron_id
from neuron_explorer.cache.schema import NEURON_COLUMNS, REDUCING_GROUPS
from neuron_explorer.engine.lab.protocol import PROMPT_NEURON_COLUMNS
from neuron_explorer.engine.patching.neuron_sets import resolve
from neuron_explorer.errors import UserError


@dataclass(frozen=True)
class Column:
    key: str  # column of the neuron frame ("id" is made from layer and neuron)
    label: str
    width: int
    number_format: str = ""

    @property
    def about(self) -> str:
        """What the column holds, for the legend line and the help's glossary (the cache's own words where it has
        them, schema.NEURON_COLUMNS)."""
        return OTHER_COLUMNS.get(self.key) or NEURON_COLUMNS.get(self.key, "")


OTHER_COLUMNS = {
    "id": "L<layer>/N<index>: the neuron's layer and its index in the MLP",
    "group": "its group (v1): sign class T/A (cos_pre > 0 / ≤ 0) and P/N (ā_pre > 0 / ≤ 0); ↓ when DPO's change "
    "of its activation lowers toxicity, ↑ for the mirror",
    "cluster": "its flat cluster among the top-|Δ| neurons (· when not clustered)",
}
SORT_GLYPHS = {True: "▼", False: "▲"}  # descending, ascending (↓/↑ name the groups' direction only)


# The neuron table's columns, in order: the list first, the rest reachable by scrolling right.
COLUMNS = (
    Column("id", "id", 10),
    Column("group", "group", 5),
    Column("contribution", "Δ", 9, "{:+.2e}"),
    Column("act_shift", "δ", 9, "{:+.2e}"),
    Column("act_pre", "ā_pre", 7, "{:+.3f}"),
    Column("act_dpo", "ā_dpo", 7, "{:+.3f}"),
    Column("cos_pre", "cos", 6, "{:+.3f}"),
    Column("p_pre", "p", 6, "{:+.3f}"),
    Column("cluster", "cl", 3),
    Column("cos_dpo", "cos_dpo", 7, "{:+.3f}"),
    Column("p_dpo", "p_dpo", 6, "{:+.3f}"),
    Column("tox_pre", "P_pre", 9, "{:+.2e}"),
    Column("tox_dpo", "P_dpo", 9, "{:+.2e}"),
    Column("value_cos", "vcos", 6, "{:.4f}"),
    Column("activation_term", "Δfire", 9, "{:+.2e}"),
    Column("weight_term", "Δwrite", 9, "{:+.2e}"),
    Column("auroc", "AUROC", 6, "{:.3f}"),
)
COLUMN_BY_KEY = {column.key: column for column in COLUMNS}
THRESHOLD_OPERATORS = (">=", "<=", "|x|>=")
RECENT_VIEWS = 8  # sorted orders kept (3.7 MB each for 458,752 neurons, 18 MB for a 70B model's 2.29 M)


@dataclass(frozen=True)
class Filters:
    """What the table keeps: a group, a cluster, the sign of Δ and one threshold on a column."""

    group: str | None = None
    cluster: int | None = None
    sign: str | None = None  # "+" keeps Δ > 0, "-" keeps Δ < 0
    threshold: tuple[str, str, float] | None = None  # (column, operator, value)

    def is_empty(self) -> bool:
        return self == Filters()

    def describe(self) -> str:
        parts = []
        if self.group:
            parts.append(f"group {self.group}")
        if self.cluster is not None:
            parts.append(f"cluster {self.cluster}")
        if self.sign:
            parts.append("Δ>0" if self.sign == "+" else "Δ<0")
        if self.threshold:
            column, operator, value = self.threshold
            label = COLUMN_BY_KEY[column].label
            text = f"|{label}|>={value:g}" if operator == "|x|>=" else f"{label}{operator}{value:g}"
            parts.append(text)
        return ", ".join(parts) or "none"

    def expression(self) -> pl.Expr | None:
        terms = []
        if self.group:
            terms.append(pl.col("group") == self.group)
        if self.cluster is not None:
            terms.append(pl.col("cluster") == self.cluster)
        if self.sign:
            terms.append(pl.col("contribution") > 0 if self.sign == "+" else pl.col("contribution") < 0)
        if self.threshold:
            column, operator, value = self.threshold
            if operator == ">=":
                terms.append(pl.col(column) >= value)
            elif operator == "<=":
                terms.append(pl.col(column) <= value)
            else:
                terms.append(pl.col(column).abs() >= value)
        return pl.all_horizontal(terms) if terms else None


SIGNED_KEYS = (pl.Int8, pl.Int16, pl.Int32)  # integer columns whose values fit a 32-bit sort key
UNSIGNED_KEYS = (pl.UInt8, pl.UInt16, pl.UInt32)


def sorted_rows(values: pl.Series, rows: np.ndarray | None, descending: bool) -> np.ndarray:
    """The row numbers ``rows`` (ascending; None: every row) of ``values`` in sorted order, nulls last, ties in row
    order: what ``rows[values.gather(rows).arg_sort(descending=descending, nulls_last=True)]`` gives, NaN above
    every number and -0.0 equal to 0.0 included.

    Polars' arg_sort takes ~0.8 s for the 2.29 M neurons of a 70B model on two cores; here each value becomes a
    32-bit key that orders as the value does, packed above its row number into one uint64, and numpy sorts those
    plain integers (a vectorised sort, ~30 ms). Other dtypes go to polars.
    """
    dtype = values.dtype
    if (
        len(values) >= 2**32
        or sys.byteorder != "little"
        or not (dtype == pl.Float32 or dtype in SIGNED_KEYS or dtype in UNSIGNED_KEYS)
    ):
        picked = values if rows is None else values.gather(rows)
        order = picked.arg_sort(descending=descending, nulls_last=True).to_numpy()
        return order if rows is None else rows[order]
    null_rows = None
    if values.null_count():
        nulls = values.is_null().to_numpy()
        rows = np.arange(len(values)) if rows is None else rows
        null_rows, rows = rows[nulls[rows]], rows[~nulls[rows]]
        values = values.fill_null(0)
    data = values.to_numpy()
    data = data if rows is None else data[rows]
    if dtype == pl.Float32:
        data = data + np.float32(0)  # a copy, -0.0 made 0.0
        data[np.isnan(data)] = np.nan  # one NaN, above +inf
        bits = data.view(np.uint32)
        bits ^= (bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(0x80000000)  # negatives flip every bit
    elif dtype in SIGNED_KEYS:
        bits = data.astype(np.int32).view(np.uint32) ^ np.uint32(0x80000000)
    else:
        bits = data.astype(np.uint32)
    if descending:
        np.invert(bits, out=bits)
    keys = bits.astype(np.uint64) << np.uint64(32)
    keys |= _row_numbers(len(keys)) if rows is None else rows.astype(np.uint64)
    keys.sort()
    order = keys.view(np.uint32)[::2].astype(np.int64)  # the low halves: the row numbers
    return order if null_rows is None else np.concatenate([order, null_rows])


@lru_cache(maxsize=2)
def _row_numbers(n: int) -> np.ndarray:
    """0 … n-1 as uint64, made once per frame size (sorting the whole frame needs them every time)."""
    numbers = np.arange(n, dtype=np.uint64)
    numbers.flags.writeable = False
    return numbers


class NeuronSource(Protocol):
    """What the neuron table reads: rows in display order (the COLUMNS keys, layer and neuron), marks, the sort."""

    marked: set[tuple[int, int]]
    empty_text: str  # what an empty table says

    @property
    def row_count(self) -> int: ...

    @property
    def sort_column(self) -> str: ...

    @property
    def descending(self) -> bool: ...

    def rows(self, start: int, stop: int) -> pl.DataFrame: ...

    def neuron_at(self, row: int) -> tuple[int, int] | None: ...

    def toggle_mark(self, layer: int, index: int) -> bool: ...

    def sort_by(self, column: str, descending: bool | None = None) -> None: ...


@dataclass(frozen=True)
class View:
    layer: int | None = None  # None: all layers
    sort_column: str = "contribution"
    descending: bool = True
    filters: Filters = field(default_factory=Filters)


class Store:
    """The open cache and the current neuron view; the screens read it and call its methods to change it."""

    empty_text = "no neurons match: x clears the filters"

    def __init__(self, reader: CacheReader):
        self.reader = reader
        self.info = reader.info
        self.frame: pl.DataFrame | None = None
        self.view = View()
        self.positions = np.zeros(0, dtype=np.int64)  # rows of `frame` in the current view, in display order
        self.marked: set[tuple[int, int]] = set()
        self._recent_views: dict[View, np.ndarray] = {}  # going back to a view (say, all layers) costs no sort

    @classmethod
    def open(cls, path: str | Path) -> Store:
        return cls(CacheReader(path))

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def loaded(self) -> bool:
        return self.frame is not None

    def load_neurons(self) -> None:
        """Read every layer's neuron arrays once (a few hundred ms for an 8B model); the view is computed here."""
        frame = self.reader.neurons()
        self.frame = frame.with_columns(pl.col("group").to_physical().alias("group_code"))
        self._recompute()

    # -- changing the view -----------------------------------------------------------------------------------
    def set_layer(self, layer: int | None) -> None:
        self._apply(replace(self.view, layer=layer))

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        """Sort by a column; with no direction, a new column sorts descending and the same column flips."""
        if column not in COLUMN_BY_KEY:
            raise UserError(f"no column '{column}' to sort by")
        if descending is None:
            descending = not self.view.descending if column == self.view.sort_column else True
        self._apply(replace(self.view, sort_column=column, descending=descending))

    def set_filters(self, filters: Filters) -> None:
        self._apply(replace(self.view, filters=filters))

    def show_cluster(self, cluster: int) -> None:
        """All layers, only this cluster's neurons (what choosing a cluster in the cluster list does)."""
        self._apply(replace(self.view, layer=None, filters=Filters(cluster=cluster)))

    def _apply(self, view: View) -> None:
        self.view = view
        self._recompute()

    def _recompute(self) -> None:
        if self.frame is None:
            return
        view = self.view
        if view in self._recent_views:
            self.positions = self._recent_views.pop(view)
            self._remember(view)
            return
        d_mlp = self.info.d_mlp
        offset = 0 if view.layer is None else view.layer * d_mlp
        base = self.frame if view.layer is None else self.frame.slice(offset, d_mlp)
        expression = view.filters.expression()
        kept = None  # rows of `base` the filters keep, ascending (None: all)
        if expression is not None:
            kept = np.flatnonzero(base.select(expression.fill_null(False)).to_series().to_numpy())
        key = "group_code" if view.sort_column == "group" else view.sort_column
        if key == "id":
            rows = np.arange(base.height) if kept is None else kept
            rows = rows[::-1] if view.descending else rows
        else:
            rows = sorted_rows(base.get_column(key), kept, view.descending)
        rows = np.ascontiguousarray(rows, dtype=np.int64)  # no copy when it is one already
        self.positions = rows + offset if offset else rows
        self._remember(view)

    def _remember(self, view: View) -> None:
        self._recent_views[view] = self.positions
        while len(self._recent_views) > RECENT_VIEWS:
            self._recent_views.pop(next(iter(self._recent_views)))

    # -- reading the view ------------------------------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self.positions)

    @property
    def sort_column(self) -> str:
        return self.view.sort_column

    @property
    def descending(self) -> bool:
        return self.view.descending

    def rows(self, start: int, stop: int) -> pl.DataFrame:
        """The view's rows ``start:stop`` (a few dozen: what the table shows)."""
        assert self.frame is not None
        return self.frame[self.positions[start:stop]]

    def neuron_at(self, row: int) -> tuple[int, int] | None:
        if not 0 <= row < len(self.positions):
            return None
        position = int(self.positions[row])
        return divmod(position, self.info.d_mlp)

    def find(self, layer: int, index: int) -> int | None:
        """The row of a neuron in the current view, or None when the view does not hold it."""
        hits = np.flatnonzero(self.positions == layer * self.info.d_mlp + index)
        return int(hits[0]) if len(hits) else None

    def jump(self, text: str) -> int:
        """The row of the neuron named ``text``; widens the view to all layers, unfiltered, when it is hidden."""
        layer, index = parse_neuron_id(text)
        if not (0 <= layer < self.info.n_layers and 0 <= index < self.info.d_mlp):
            raise UserError(
                f"{neuron_id(layer, index)} does not exist: layers 0–{self.info.n_layers - 1}, "
                f"neurons 0–{self.info.d_mlp - 1}"
            )
        row = self.find(layer, index)
        if row is None:
            self._apply(replace(self.view, layer=None, filters=Filters()))
            row = self.find(layer, index)
        assert row is not None
        return row

    def describe_view(self) -> str:
        view = self.view
        where = "all layers" if view.layer is None else f"layer {view.layer}"
        arrow = SORT_GLYPHS[view.descending]
        return (
            f"{where} · {self.row_count:,} neurons · sort {COLUMN_BY_KEY[view.sort_column].label}{arrow}"
            f" · filter {view.filters.describe()}"
        )

    def view_frame(self) -> pl.DataFrame:
        """The whole current view as the table shows it, for export: its rows in display order, its columns in
        order under the names the screen shows (id, group, Δ, δ, ā_pre, ...), then layer and neuron as numbers."""
        assert self.frame is not None
        rows = self.frame[self.positions]
        shown = [pl.format("L{}/N{}", pl.col("layer"), pl.col("neuron")).alias("id")]
        shown += [pl.col(column.key).alias(column.label) for column in COLUMNS[1:] if column.key in rows.columns]
        return rows.select(*shown, "layer", "neuron")

    # -- marks, sets, export ---------------------------------------------------------------------------------
    def toggle_mark(self, layer: int, index: int) -> bool:
        key = (layer, index)
        if key in self.marked:
            self.marked.discard(key)
            return False
        self.marked.add(key)
        return True

    def clear_marks(self) -> None:
        self.marked.clear()

    def set_neurons(self, spec: str) -> list[tuple[int, int]]:
        """The neurons of a neuron-set spec (group:TP↓, cluster:3, set:NAME, ...), resolved by the same code as
        the patch command's --set (engine/patching/neuron_sets.py), so the explorer counts what a run patches."""
        return [tuple(pair) for pair in resolve(self.reader, [spec]).neurons.tolist()]

    def view_neurons(self) -> list[tuple[int, int]]:
        layers, indices = np.divmod(self.positions, self.info.d_mlp)
        return list(zip(layers.tolist(), indices.tolist()))

    def save_set(self, name: str, source: str) -> sidecar.NeuronSet:
        """Save ``source`` ("selection", "view", "group TP↓" or "cluster 3") as the named neuron set."""
        if source == "selection":
            neurons, description = sorted(self.marked), f"selection of {len(self.marked)} neurons"
        elif source == "view":
            neurons, description = self.view_neurons(), f"filter {self.describe_view()}"
        elif source.startswith(("group ", "cluster ")):
            neurons, description = self.set_neurons(source.replace(" ", ":", 1)), source
        else:
            raise UserError(f"cannot save '{source}' as a set")
        if not neurons:
            raise UserError(f"nothing to save: the {source} holds no neurons")
        return sidecar.save_set(self.path, name, neurons, description)

    def export(self, path: str | Path) -> Path:
        """Write the current view to CSV or Parquet, chosen by the file's extension."""
        path = Path(path).expanduser()
        frame = self.view_frame()
        if path.suffix not in (".parquet", ".csv"):
            raise UserError(f"{path}: export to a .csv or .parquet file")
        with atomic_path(path, advice="choose another file") as temporary:  # an older export survives a full disk
            if path.suffix == ".parquet":
                frame.write_parquet(temporary)
            else:
                frame.with_columns(pl.col("group").cast(pl.Utf8)).write_csv(temporary)
        return path

    def default_export_name(self, extension: str) -> str:
        """In the cache's folder, named for the view: ``synthetic-all-group-TPdown-delta-pos-sort-delta-desc.csv``."""
        view = self.view
        parts = [self.path.stem, "all" if view.layer is None else f"L{view.layer}"]
        if not view.filters.is_empty():
            parts.append(view.filters.describe())
        parts.append(f"sort {COLUMN_BY_KEY[view.sort_column].label} {'desc' if view.descending else 'asc'}")
        name = "-".join(parts)
        for text, word in (
            ("↓", "down"),
            ("↑", "up"),
            ("|Δ|", "abs-delta"),
            ("Δ", "delta"),
            ("δ", "act-shift"),
            (">=", " ge "),
            ("<=", " le "),
            (">0", " pos"),
            ("<0", " neg"),
        ):
            name = name.replace(text, word)
        slug = re.sub(r"[^\w.+-]+", "-", name).strip("-")
        return str(self.path.with_name(f"{slug}.{extension}"))


class PromptNeurons:
    """One lab prompt's top neurons as a neuron-table source: this prompt's activations and Δ (the worker's
    `neurons` columns) beside the cache's columns of the same neurons (group, cosines, cluster). It sorts itself,
    never the Store's view; its marks are the Store's, so a neuron marked here is marked everywhere."""

    empty_text = "no neurons yet: run a prompt (enter) and its top neurons by Δ and |δ| show here"
    sort_column: str  # set by `sort_by`
    descending: bool

    def __init__(self, store: Store, neurons: dict | None = None) -> None:
        self.store = store
        self.marked = store.marked
        self.frame = self._sorted = self._join(store, neurons) if neurons else None
        self.sort_by("contribution", True)

    @staticmethod
    def _join(store: Store, neurons: dict) -> pl.DataFrame:
        assert store.frame is not None
        layers = np.asarray(neurons["layer"], dtype=np.int64)
        positions = layers * store.info.d_mlp + np.asarray(neurons["neuron"], dtype=np.int64)
        cached = store.frame[positions].drop(PROMPT_NEURON_COLUMNS, strict=False)
        return cached.with_columns(pl.Series(name, neurons[name], dtype=pl.Float64) for name in PROMPT_NEURON_COLUMNS)

    @property
    def row_count(self) -> int:
        return 0 if self._sorted is None else self._sorted.height

    def rows(self, start: int, stop: int) -> pl.DataFrame:
        assert self._sorted is not None
        return self._sorted[start:stop]

    def neuron_at(self, row: int) -> tuple[int, int] | None:
        if not 0 <= row < self.row_count:
            return None
        assert self._sorted is not None  # a row was in range
        return int(self._sorted["layer"][row]), int(self._sorted["neuron"][row])

    def toggle_mark(self, layer: int, index: int) -> bool:
        return self.store.toggle_mark(layer, index)

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        """As `Store.sort_by`: a new column sorts descending, the same column flips."""
        if column not in COLUMN_BY_KEY:
            raise UserError(f"no column '{column}' to sort by")
        if descending is None:
            descending = not self.descending if column == self.sort_column else True
        self.sort_column, self.descending = column, descending
        if self.frame is not None:
            keys = {"id": ["layer", "neuron"], "group": ["group_code"]}.get(column, [column])
            self._sorted = self.frame.sort(keys, descending=descending, nulls_last=True)


def is_reducing(group: str) -> bool:
    return group in REDUCING_GROUPS
