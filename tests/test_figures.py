"""`neuron-explorer figures`: the plotted values against the cache (read by other code than the figures'), the files
and their provenance, and one-line errors."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from neuron_explorer import figures
from neuron_explorer.cache import annotations, schema
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.commands import figures as figures_command
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return build_synthetic_cache(tmp_path_factory.mktemp("figures") / "synthetic.h5")


def bars(figure, gid: str) -> list:
    """The bar patches matplotlib drew for one series (its gid)."""
    return [patch for patch in figure.axes[0].patches if patch.get_gid() == gid]


def test_layers_figure_stacks_each_groups_sum_per_layer(cache):
    with CacheReader(cache) as reader:
        frame = reader.neurons()
        figure = figures.layers_figure(reader)
    # Σ Δ per (layer, group) by polars over every neuron, not by the reader's bincount the figure uses
    expected = frame.group_by("layer", "group").agg(pl.col("contribution").cast(pl.Float64).sum())
    for row in expected.iter_rows(named=True):
        patch = bars(figure, row["group"])[row["layer"]]
        assert patch.get_height() == pytest.approx(row["contribution"], rel=1e-4, abs=1e-7)
    # positive sums stack upward from 0, negative ones downward: each layer's top is its Σ of positive group sums
    for layer in range(4):
        patches = [bars(figure, group)[layer] for group in schema.GROUP_NAMES]
        top = max(patch.get_y() + max(patch.get_height(), 0) for patch in patches)
        positive = expected.filter((pl.col("layer") == layer) & (pl.col("contribution") > 0))["contribution"].sum()
        assert top == pytest.approx(positive, rel=1e-4)


def test_shares_figure_shows_v1_shares_recomputed_from_the_neurons(cache):
    with CacheReader(cache) as reader:
        frame = reader.neurons()
        figure = figures.shares_figure(reader)
    sums = dict(frame.group_by("group").agg(pl.col("contribution").cast(pl.Float64).sum()).iter_rows())
    for group, patch in zip(schema.GROUP_NAMES, bars(figure, "v1")):
        side = schema.REDUCING_GROUPS if group in schema.REDUCING_GROUPS else schema.MIRROR_GROUPS
        assert patch.get_height() == pytest.approx(sums[group] / sum(sums[name] for name in side), rel=1e-4)


def test_recovered_figure_draws_each_run_with_its_standard_error(cache, tmp_path):
    path = tmp_path / "runs.h5"
    path.write_bytes(cache.read_bytes())
    # base 0.30 ± 0, DPO 0.10 ± 0, a run at 0.20 ± 0.02: recovered 0.5 exactly, its s.e. 0.02 / 0.2 = 0.1
    annotations.save_baseline(
        path, "k", {"base": {"toxicity": 0.30, "toxicity_sem": 0.0}, "dpo": {"toxicity": 0.10, "toxicity_sem": 0.0}}
    )
    annotations.save_run(
        path, {"label": "half", "baseline": "k"}, {"recovered": 0.5, "toxicity_sem": 0.02}, [], label="a-half"
    )
    annotations.save_run(
        path, {"label": "no baseline"}, {"recovered": 0.25, "toxicity_sem": 0.02}, [], label="b-no-baseline"
    )
    with CacheReader(path) as reader:
        figure = figures.recovered_figure(reader)
    widths = [patch.get_width() for patch in bars(figure, "recovered")]
    assert widths == pytest.approx([0.5, 0.25])
    rows = figures.recovered_rows(path)
    assert rows[0].error == pytest.approx(0.1) and math.isnan(rows[1].error)
    errorbar = next(container for container in figure.axes[0].containers if hasattr(container, "has_xerr"))
    segments = errorbar.lines[2][0].get_segments()  # one horizontal segment per run: R − s.e. to R + s.e.
    assert tuple(segments[0][:, 0]) == pytest.approx((0.4, 0.6))


def test_the_delta_method_error_of_recovered_matches_a_simulation():
    """Independent check of `recovered_error`: the spread of R over many draws of the three toxicities."""
    rng = np.random.default_rng(0)
    base, dpo, run = (0.30, 0.02), (0.10, 0.015), (0.22, 0.02)
    draws = {
        name: rng.normal(mean, sem, 200_000) for name, (mean, sem) in {"base": base, "dpo": dpo, "run": run}.items()
    }
    simulated = np.std((draws["base"] - draws["run"]) / (draws["base"] - draws["dpo"]))
    recovered = (base[0] - run[0]) / (base[0] - dpo[0])
    computed = figures.recovered_error(
        recovered, run[1], {"toxicity": base[0], "toxicity_sem": base[1]}, {"toxicity": dpo[0], "toxicity_sem": dpo[1]}
    )
    assert computed == pytest.approx(simulated, rel=0.05)


def test_neuron_figure_histograms_the_stored_per_prompt_activations(cache):
    with CacheReader(cache) as reader:
        neuron = figures.top_neuron(reader)
        frame = reader.neurons()
        figure = figures.neuron_figure(reader, neuron)
        activations = reader.file["prompt_acts/pre"][:, neuron[0], neuron[1]]
    best = frame.sort("contribution", descending=True).row(0, named=True)
    assert neuron == (best["layer"], best["neuron"])
    heights = [patch.get_height() for patch in bars(figure, "base")]
    assert sum(heights) == len(activations)
    edges = [patch.get_x() for patch in bars(figure, "base")] + [
        bars(figure, "base")[-1].get_x() + bars(figure, "base")[-1].get_width()
    ]
    assert heights == list(np.histogram(activations, bins=np.asarray(edges))[0])


def test_the_command_writes_svg_and_png_with_provenance(cache, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(cache), "-o", str(out)]) == 0
    written = sorted(path.name for path in out.iterdir())
    assert len(written) == 8 and {name.rsplit(".", 1)[1] for name in written} == {"svg", "png"}
    assert capsys.readouterr().out.split() == [
        str(out / name)
        for name in sorted(
            written, key=lambda n: (figures.FIGURES.index(n.split("-")[1].split(".")[0]), n.endswith(".png"))
        )
    ]
    for path in out.iterdir():
        record = figures.read_metadata(path)
        assert record["cache"] == cache.name and record["groups"] == figures.GROUP_DEFINITION
        assert record["figure"] in path.name and "protocol" in record


def test_the_command_refuses_bad_input_in_one_line(cache, tmp_path, capsys):
    assert main(["figures", str(cache), "--neuron", "L99/N0", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    assert main(["figures", str(tmp_path / "missing.h5")]) == 2
    assert figures_command.FIGURES == figures.FIGURES
