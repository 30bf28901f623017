"""The logit lens of every value vector: equal to plain numpy arithmetic on the weights, and computed once per
distinct weight (the memo is read back, and a broken one is computed anew)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_explorer.engine.model import weights
from neuron_explorer.engine.model.loading import load_model


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny models (tests/conftest.py: one_torch_thread)."""


def plain_lens(tensors: dict[str, np.ndarray], kind: str, layer: int) -> np.ndarray:
    """Logits of each value vector through the final norm's gain (and GPT-2's centring) and the unembedding, from the
    state dict's tensors with numpy."""
    if kind == "gpt2":
        values = tensors[f"transformer.h.{layer}.mlp.c_proj.weight"].astype(
            np.float64
        )  # Conv1D: rows are value vectors
        values = values - values.mean(axis=1, keepdims=True)
        gain, unembedding = tensors["transformer.ln_f.weight"], tensors["transformer.wte.weight"]
    else:
        values = tensors[f"model.layers.{layer}.mlp.down_proj.weight"].T.astype(np.float64)
        gain, unembedding = tensors["model.norm.weight"], tensors["lm_head.weight"]
    return (values * gain.astype(np.float64)) @ unembedding.astype(np.float64).T


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_value_tokens_equal_plain_arithmetic(kind, pairs):
    base, _ = pairs[kind]
    loaded = load_model(str(base), device="cpu", dtype="float32")
    gain = loaded.arch.final_norm(loaded.model).weight
    with torch.no_grad():  # the tiny models' gain is all ones: make it matter
        gain.copy_(torch.rand(gain.shape, generator=torch.Generator().manual_seed(1)) + 0.5)
    tensors = {name: value.numpy() for name, value in loaded.model.state_dict().items()}
    found = weights.value_tokens(loaded, k=5, chunk=16, layers=[2, 0])
    for row, layer in enumerate([2, 0]):
        logits = plain_lens(tensors, kind, layer)
        order = np.argsort(-logits, axis=1, kind="stable")
        np.testing.assert_array_equal(found["top_tokens"][row], order[:, :5])
        np.testing.assert_array_equal(found["bottom_tokens"][row], order[:, ::-1][:, :5])
        np.testing.assert_allclose(
            found["top_scores"][row], np.take_along_axis(logits, order[:, :5], 1), rtol=1e-4, atol=1e-5
        )


def test_the_lens_is_computed_once_per_distinct_weight(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_EXPLORER_HOME", str(tmp_path))
    base, tuned = (load_model(str(folder), device="cpu", dtype="float32") for folder in pairs["llama"])
    memo = weights.lens_memo(base)
    assert memo is not None and memo.is_relative_to(tmp_path)
    assert weights.lens_memo(tuned) != memo  # other weights, another memo
    fresh = weights.value_tokens(base, k=4, memo=memo)
    assert len(list(memo.iterdir())) == 3  # one file per layer

    computed = []
    real = weights._lens_top_k
    monkeypatch.setattr(weights, "_lens_top_k", lambda *args: computed.append(args[1]) or real(*args))
    again = weights.value_tokens(base, k=4, memo=memo)
    assert computed == []  # all read back
    for name in fresh:
        np.testing.assert_array_equal(again[name], fresh[name])

    (memo / "layer-1-k4.npz").write_bytes(b"not a memo")
    repaired = weights.value_tokens(base, k=4, memo=memo)
    assert computed == [1]  # the broken layer alone was computed anew
    for name in fresh:
        np.testing.assert_array_equal(repaired[name], fresh[name])
    weights.value_tokens(base, k=3, memo=memo)  # another k is another memo entry
    assert computed == [1, 0, 1, 2]


def test_a_model_without_identity_has_no_memo(pairs):
    loaded = load_model(str(pairs["llama"][0]), device="cpu", dtype="float32")
    loaded.description.pop("content_sha256")
    assert weights.lens_memo(loaded) is None
