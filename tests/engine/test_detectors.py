"""The detector AUROC (METHOD §8) against scikit-learn's roc_auc_score, on random neurons and hand-built ones, and
the `auroc:K` neuron sets it ranks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.neurons.statistics import detector_auroc
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
from neuron_explorer.engine.patching.neuron_sets import resolve
from neuron_explorer.errors import UserError


def sklearn_auroc(acts: np.ndarray, toxic: np.ndarray) -> np.ndarray:
    """roc_auc_score neuron by neuron: (prompts, layers, d_mlp) -> (layers, d_mlp)."""
    flat = acts.reshape(acts.shape[0], -1)
    return np.array([roc_auc_score(toxic, flat[:, i]) for i in range(flat.shape[1])]).reshape(acts.shape[1:])


@pytest.mark.parametrize("dtype", [np.float64, np.float16], ids=["distinct", "float16 ties"])
def test_auroc_matches_scikit_learn_on_random_neurons(dtype):
    rng = np.random.default_rng(0)
    toxic = rng.random(40) < 0.3
    acts = (rng.normal(0, 1, (40, 3, 25)) + 0.8 * toxic[:, None, None] * rng.normal(0, 1, (1, 3, 25))).astype(dtype)
    if dtype == np.float16:
        acts = np.round(acts, 1).astype(dtype)  # many ties, which count one half
    np.testing.assert_allclose(detector_auroc(acts, toxic), sklearn_auroc(acts, toxic), rtol=1e-6)


def test_auroc_of_hand_built_neurons():
    """Neuron 0 fires more on every toxic prompt than on any clean one (1), neuron 1 less (0), neuron 2 the same
    everywhere (1/2), neuron 3 ranks toxic prompts 1st and 3rd of four (3 of 4 pairs: 0.75)."""
    toxic = np.array([True, True, False, False])
    acts = np.array([[5.0, -5.0, 1.0, 4.0], [4.0, -4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 3.0], [0.0, 2.0, 1.0, 1.0]])[
        :, None, :
    ]
    assert detector_auroc(acts, toxic)[0].tolist() == [1.0, 0.0, 0.5, 0.75]
    assert sklearn_auroc(acts, toxic)[0].tolist() == [1.0, 0.0, 0.5, 0.75]


def test_one_class_gives_nan():
    acts = np.random.default_rng(1).normal(0, 1, (6, 2, 4))
    for toxic in (np.zeros(6, bool), np.ones(6, bool)):
        assert np.isnan(detector_auroc(acts, toxic)).all()


def test_stored_auroc_and_auroc_sets(tmp_path):
    """The synthetic cache's AUROC, read back, is roc_auc_score of its stored per-prompt activations against its
    stored labels; `auroc:K` is the K largest of those."""
    path = build_synthetic_cache(tmp_path / "s.h5", n_layers=3, d_mlp=16, n_prompts=30, cluster_top_k=8, n_clusters=2)
    with CacheReader(path) as reader:
        acts = reader.file["prompt_acts/pre"][:]
        scores = reader.table("prompts")["toxicity_pre"].to_numpy()
        attrs = reader.attrs("neurons/auroc")
        stored = reader.neuron_array("auroc")
        expected = sklearn_auroc(acts, scores > 0.5)
        np.testing.assert_allclose(stored, expected, rtol=1e-6)
        assert (attrs["n_toxic"], attrs["n_clean"]) == ((scores > 0.5).sum(), (scores <= 0.5).sum())
        top = np.argsort(-expected.ravel(), kind="stable")[:7]
        chosen = resolve(reader, ["auroc:7"]).neurons
        assert sorted(map(tuple, chosen.tolist())) == sorted((int(i // 16), int(i % 16)) for i in top)


def test_auroc_set_refused_when_one_class():
    shape = (2, 4)
    reader = SimpleNamespace(
        info=SimpleNamespace(n_layers=2, d_mlp=4),
        path="one-class.h5",
        has=lambda name: True,
        neuron_array=lambda name: np.full(shape, np.nan, np.float32),
    )
    with pytest.raises(UserError, match="all toxic or all clean"):
        resolve(reader, ["auroc:3"])
