"""Models larger than one device: accelerate's big-model loading with a split forced by --max-memory, where the layers
that do not fit are offloaded (their weights wait on `meta` until their hook loads them), records the same cache as a
plain run, and the lab and an intervention work on it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.errors import UserError

ARRAYS = ("act_pre", "act_dpo", "contribution", "p_pre", "cos_pre", "value_cos")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny models (tests/conftest.py: one_torch_thread)."""


def split_budget(folder) -> str:
    """A --max-memory that holds the embedding and the first block only: the other blocks are offloaded."""
    model = load_model(str(folder), device="cpu", dtype="float32").model
    size = sum(p.numel() * p.element_size() for p in model.get_input_embeddings().parameters())
    size += (
        sum(p.numel() * p.element_size() for p in model.base_model.layers[0].parameters())
        if hasattr(model.base_model, "layers")
        else sum(p.numel() * p.element_size() for p in model.base_model.h[0].parameters())
    )
    return f"cpu={size + 4096}"


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_offloaded_layers_record_the_same_cache_as_a_plain_run(kind, pairs, compute_cache):
    base, tuned = pairs[kind]
    budget = split_budget(base)
    offloaded = load_model(
        str(base),
        device="cpu",
        dtype="float32",
        device_map="auto",
        max_memory={"cpu": int(budget.removeprefix("cpu="))},
    )
    placement = set(offloaded.model.hf_device_map.values())
    assert {"cpu", "disk"} <= placement, offloaded.model.hf_device_map  # a real split: some weights wait on meta
    assert any(p.device.type == "meta" for p in offloaded.model.parameters())

    plain = compute_cache(base, tuned, f"plain-{kind}.h5")
    split = compute_cache(base, tuned, f"split-{kind}.h5", device_map="auto", max_memory=budget)
    with h5py.File(plain, "r", locking=False) as a, h5py.File(split, "r", locking=False) as b:
        for name in ARRAYS:
            np.testing.assert_allclose(
                b[f"neurons/{name}"][:], a[f"neurons/{name}"][:], rtol=1e-4, atol=1e-6, err_msg=name
            )
        np.testing.assert_array_equal(b["neurons/group"][:], a["neurons/group"][:])
        np.testing.assert_array_equal(b["clusters/label"][:], a["clusters/label"][:])
        np.testing.assert_array_equal(b["neurons/top_tokens_pre"][:], a["neurons/top_tokens_pre"][:])
        np.testing.assert_allclose(
            b["prompt_acts/pre"][:].astype(float), a["prompt_acts/pre"][:].astype(float), rtol=2e-3, atol=1e-4
        )
        assert list(b["prompts/continuation_pre"].asstr()[:]) == list(a["prompts/continuation_pre"].asstr()[:])


def test_an_intervention_on_an_offloaded_layer_acts_as_on_a_plain_model(pairs):
    from neuron_explorer.engine.patching import interventions as iv
    from neuron_explorer.engine.patching.neuron_sets import NeuronSelection

    base, _ = pairs["llama"]
    plain = load_model(str(base), device="cpu", dtype="float32")
    split = load_model(
        str(base),
        device="cpu",
        dtype="float32",
        device_map="auto",
        max_memory={"cpu": int(split_budget(base).removeprefix("cpu="))},
    )
    ids = plain.tokenizer(["You are a stupid"], return_tensors="pt")["input_ids"]
    selection = NeuronSelection.from_pairs([(2, i) for i in range(0, 64, 3)], n_layers=3, d_mlp=64)
    outputs = []
    for loaded in (plain, split):
        with (
            torch.no_grad(),
            iv.scale(loaded, selection, 0.25).hooks(),
            iv.subtract_direction(loaded, np.ones(32), 0.5).hooks(),
        ):
            outputs.append(loaded.model(input_ids=ids).logits)
        assert iv.hook_count(loaded) == 0
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_max_memory_without_a_device_map_is_a_clear_error(pairs):
    with pytest.raises(UserError, match="--device-map auto"):
        load_model(str(pairs["llama"][0]), device="cpu", max_memory={"cpu": "1GiB"})
