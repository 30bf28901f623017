"""The Store: the view's layer, sort, filters, jump, sets and export, without the UI."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from neuron_explorer.cache import annotations
from neuron_explorer.errors import UserError
from neuron_explorer.explorer.state import COLUMNS, Filters, Store


@pytest.fixture
def store(cache_path):
    store = Store.open(cache_path)
    store.load_neurons()
    yield store
    store.reader.close()


def contributions(store: Store) -> np.ndarray:
    return store.frame["contribution"].to_numpy()[store.positions]


def test_default_view_is_every_neuron_by_descending_contribution(store):
    assert store.row_count == store.info.n_neurons
    values = contributions(store)
    assert np.all(np.diff(values) <= 0)


def test_layer_sort_and_filter_compose(store):
    store.set_layer(2)
    store.sort_by("act_shift", descending=False)
    store.set_filters(Filters(group="TP↓", threshold=("contribution", "|x|>=", 1e-4)))
    rows = store.rows(0, store.row_count)
    assert set(rows["layer"].to_list()) == {2}
    assert set(rows["group"].cast(pl.Utf8).to_list()) == {"TP↓"}
    assert (rows["contribution"].abs() >= 1e-4).all()
    assert rows["act_shift"].is_sorted()
    assert "layer 2" in store.describe_view() and "group TP↓" in store.describe_view()


def test_sorting_the_same_column_again_flips_it(store):
    store.sort_by("cos_pre")
    assert store.view.descending
    store.sort_by("cos_pre")
    assert not store.view.descending


def test_sign_and_cluster_filters(store, cache_path):
    """Each filter keeps exactly the neurons that the file says meet it (counted with h5py, not through the Store):
    a filter that emptied the view would pass an "all rows meet it" check."""
    import h5py

    with h5py.File(cache_path, "r", locking=False) as handle:
        negative = int((handle["neurons/contribution"][:] < 0).sum())
        in_cluster = int((handle["clusters/label"][:] == 3).sum())
    assert 0 < negative < store.info.n_neurons and in_cluster > 0
    store.set_filters(Filters(sign="-"))
    assert store.row_count == negative and (contributions(store) < 0).all()
    store.show_cluster(3)
    rows = store.rows(0, store.row_count)
    assert store.row_count == in_cluster and store.view.layer is None
    assert rows["cluster"].to_list() == [3] * in_cluster


def test_jump_widens_a_view_that_hides_the_neuron(store):
    store.set_layer(0)
    row = store.jump("L3/N5")
    assert store.view.layer is None and store.neuron_at(row) == (3, 5)
    with pytest.raises(UserError):
        store.jump("L99/N0")
    with pytest.raises(UserError):
        store.jump("nonsense")


def test_sets_from_selection_group_cluster_and_view(store, cache_path):
    store.toggle_mark(1, 2)
    store.toggle_mark(0, 7)
    assert store.save_set("picked", "selection").neurons == [(0, 7), (1, 2)]
    group = store.save_set("tp", "group TP↓")
    assert len(group.neurons) == store.frame.filter(pl.col("group") == "TP↓").height
    cluster = store.save_set("c2", "cluster 2")
    assert cluster.description == "cluster 2" and cluster.neurons
    store.set_layer(1)
    assert len(store.save_set("layer1", "view").neurons) == store.info.d_mlp
    assert [s.name for s in annotations.list_sets(cache_path)] == ["c2", "layer1", "picked", "tp"]
    store.clear_marks()
    with pytest.raises(UserError):
        store.save_set("empty", "selection")


def test_export_csv_and_parquet_keep_the_view_order(store, tmp_path):
    store.set_layer(1)
    store.sort_by("act_pre", descending=False)
    parquet = pl.read_parquet(store.export(tmp_path / "view.parquet"))
    csv = pl.read_csv(store.export(tmp_path / "view.csv"))
    assert parquet.height == csv.height == store.info.d_mlp
    assert parquet["ā_pre"].is_sorted() and parquet["id"][0].startswith("L1/N")
    assert csv["id"].to_list() == parquet["id"].to_list()
    # the columns the table shows, in its order and under its labels, then the ids as numbers
    assert parquet.columns == [column.label for column in COLUMNS] + ["layer", "neuron"]
    assert parquet["Δ"].to_list() == store.frame[store.positions]["contribution"].to_list()
    with pytest.raises(UserError):
        store.export(tmp_path / "view.xlsx")


def awkward_values(dtype, n: int, rng: np.random.Generator) -> pl.Series:
    """Ties, nulls, and for floats NaN, ±inf, -0.0 and 0.0, subnormals and extremes."""
    if dtype in (pl.Float32, pl.Float64):
        pool = np.array(
            [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.5, -1.5], dtype=np.float32
        )
        data = np.where(rng.random(n) < 0.3, rng.choice(pool, n), rng.normal(size=n).astype(np.float32))
    else:
        info = np.iinfo(
            {
                pl.Int8: np.int8,
                pl.Int16: np.int16,
                pl.Int32: np.int32,
                pl.UInt8: np.uint8,
                pl.UInt16: np.uint16,
                pl.UInt32: np.uint32,
            }[dtype]
        )
        data = rng.integers(info.min, info.max, n, endpoint=True)
        data = np.where(rng.random(n) < 0.3, rng.choice([info.min, info.max, 0, 1], n), data)
    series = pl.Series("x", data).cast(dtype, strict=False)
    return series.scatter(np.flatnonzero(rng.random(n) < 0.1), None)


@pytest.mark.parametrize("dtype", [pl.Float32, pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt32, pl.Float64])
@pytest.mark.parametrize("descending", [False, True])
def test_the_fast_sort_orders_rows_as_polars_does(dtype, descending):
    """`sorted_rows` packs values into integer keys; polars' sort by value, then row number (nulls last), is the
    independent reference, on whole columns and on filtered subsets."""
    from neuron_explorer.explorer.state import sorted_rows

    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(1, 400))
        values = awkward_values(dtype, n, rng)
        rows = None if trial % 2 else np.flatnonzero(rng.random(n) < 0.6)
        table = pl.DataFrame({"value": values, "row": np.arange(n)})
        table = table if rows is None else table[rows]
        expected = table.sort(["value", "row"], descending=[descending, False], nulls_last=True)["row"].to_numpy()
        np.testing.assert_array_equal(sorted_rows(values, rows, descending), expected, err_msg=f"trial {trial}")
