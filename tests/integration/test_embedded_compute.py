"""`compute` on the embedded SmolLM2-135M-Instruct (30 layers × 1,536 neurons), against a tuned copy whose MLP
input weights of a few neurons were scaled, with the toxic-embedding probe."""

from __future__ import annotations

import numpy as np
import pytest

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
from neuron_explorer.spec.settings import RecordingSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCALED = [(4, 100), (4, 200), (17, 1000)]


@pytest.fixture(scope="module")
def tuned_copy(embedded_model, edited_copy, tmp_path_factory):
    def scale_inputs(model) -> None:
        for layer, neuron in SCALED:
            model.model.layers[layer].mlp.up_proj.weight[neuron] *= 0.5

    return edited_copy(embedded_model, tmp_path_factory.mktemp("embedded-tuned"), edit=scale_inputs)


def test_compute_on_the_embedded_pair(tuned_copy, tmp_path):
    settings = ComputeSettings(
        base="embedded",
        tuned=str(tuned_copy),
        probe="toxic-embedding",
        prompts="builtin:heldout",
        max_prompts=12,
        recording=RecordingSettings(new_tokens=8, batch_size=6, shared_continuation=True),
        output=tmp_path / "embedded.h5",
        device="cpu",
        dtype="float32",
        cluster_top_k=300,
        n_clusters=6,
    )
    result = run_compute(settings)
    with CacheReader(result.path) as reader:
        assert (reader.info.n_layers, reader.info.d_mlp, reader.info.d_model) == (30, 1536, 576)
        layers = reader.layers()
        for model in ("pre", "dpo"):
            relative = (layers[f"residual_{model}"].abs() / layers[f"mlp_proj_{model}"].abs().clip(1e-3)).max()
            assert relative < 1e-4
        frame = reader.neurons()
        assert frame.height == 46_080
        # before layer 4 nothing changed, so nothing moved there (shared tokens, same weights upstream)
        assert frame.filter(frame["layer"] < 4)["contribution"].abs().max() < 1e-6
        strongest = frame.filter(frame["layer"] == 4).sort(pl_abs("contribution"), descending=True).head(2)
        assert sorted(strongest["neuron"].to_list()) == [100, 200]
        assert reader.top_tokens(17, 1000)["token"].str.len_chars().sum() > 0
        assert reader.clusters()["size"].sum() == 300
        assert np.isfinite(reader.probe_direction()).all()


def pl_abs(column: str):
    import polars as pl

    return pl.col(column).abs()
