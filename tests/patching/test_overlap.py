"""Neuron sets against chance (METHOD §8): overlap and Jaccard of sets with a known overlap, the chance level
against scipy's hypergeometric distribution and a literal permutation within layers, and `compare-sets`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import hypergeom

from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
from neuron_explorer.engine.patching.overlap import compare, compare_all


def masks_with_overlap(shape, size_a: int, size_b: int, shared: int, seed: int = 0):
    """Two random masks of the given sizes sharing exactly `shared` neurons."""
    order = np.random.default_rng(seed).permutation(shape[0] * shape[1])
    a, b = np.zeros(order.size, bool), np.zeros(order.size, bool)
    a[order[:size_a]] = True
    b[order[size_a - shared : size_a - shared + size_b]] = True
    return a.reshape(shape), b.reshape(shape)


def test_known_overlap_and_jaccard():
    a, b = masks_with_overlap((4, 50), 30, 20, 7)
    result = compare(a, b, draws=10)
    assert (result.size_a, result.size_b, result.overlap) == (30, 20, 7)
    assert result.jaccard == pytest.approx(7 / 43)
    same = compare(a, a, draws=500)
    assert (same.overlap, same.jaccard) == (30, 1.0) and same.p_value == pytest.approx(1 / 501)
    assert compare(a, ~a, draws=10).overlap == 0


def test_chance_of_one_layer_is_scipys_hypergeometric():
    """One layer of 100 neurons, |A| = 30, |B| = 40: the overlap of a random A is hypergeom(100, 40, 30)."""
    a, b = masks_with_overlap((1, 100), 30, 40, 25)
    result = compare(a, b, draws=20000, rng=np.random.default_rng(1))
    law = hypergeom(100, 40, 30)
    assert result.chance_overlap == pytest.approx(law.mean())
    assert result.chance_overlap_sd == pytest.approx(law.std())
    assert result.p_value == pytest.approx(law.sf(24), abs=0.01)  # P(overlap ≥ 25)
    support = np.arange(0, 31)
    assert result.chance_jaccard == pytest.approx((law.pmf(support) * support / (70 - support)).sum(), rel=0.02)


def test_chance_is_layer_matched_by_a_literal_permutation():
    """Sets crowded into different layers: chance is far from the all-neuron hypergeometric, and the module's mean
    and spread (overlap exact, Jaccard drawn) agree with shuffling A's neurons within each layer by hand."""
    rng = np.random.default_rng(2)
    shape = (3, 40)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[0, :20], a[1, :5], a[2, :2] = True, True, True
    b[0, 10:35], b[1, :3], b[2, :30] = True, True, True
    result = compare(a, b, draws=20000, rng=np.random.default_rng(3))
    overlaps = []
    for _ in range(4000):
        shuffled = np.stack([row[rng.permutation(shape[1])] for row in a])
        overlaps.append(int((shuffled & b).sum()))
    overlaps = np.array(overlaps)
    union = a.sum() + b.sum() - overlaps
    assert result.chance_overlap == pytest.approx(overlaps.mean(), abs=0.1)
    assert result.chance_overlap_sd == pytest.approx(overlaps.std(), rel=0.05)
    assert result.chance_jaccard == pytest.approx((overlaps / union).mean(), abs=0.004)
    assert result.chance_jaccard_sd == pytest.approx((overlaps / union).std(), rel=0.05)
    uniform = a.sum() * b.sum() / a.size  # chance without the layer matching: 13.1, not 20·25/40 + 5·3/40 + 2·30/40
    assert result.chance_overlap == pytest.approx(20 * 25 / 40 + 5 * 3 / 40 + 2 * 30 / 40)
    assert abs(result.chance_overlap - uniform) > 1


def test_compare_all_takes_every_pair_in_order():
    a, b = masks_with_overlap((2, 30), 10, 10, 3)
    names = [(r.a, r.b) for r in compare_all({"x": a, "y": b, "z": a | b}, draws=5)]
    assert names == [("x", "y"), ("x", "z"), ("y", "z")]


def test_compare_sets_command(tmp_path, capsys):
    path = build_synthetic_cache(tmp_path / "s.h5", n_layers=3, d_mlp=32, n_prompts=12, cluster_top_k=8, n_clusters=2)
    assert main(["compare-sets", str(path), "group:TP↓", "toxic:20", "ids:L0/N1,L0/N2", "--draws", "50"]) == 0
    out = capsys.readouterr().out
    assert "toxic:20" in out and "chance J" in out and out.count("group:TP↓") == 2
    assert main(["compare-sets", str(path), "group:TP↓"]) == 2
    assert main(["compare-sets", str(path), "group:TP↓", "nonsense:3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err
