"""Where the pair differs on any text: an identical pair differs nowhere; a pair that differs by a bias added to
one layer's MLP output differs by exactly that bias there, and the stored tokens are that bias's own logit lens,
computed here with plain torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
from neuron_explorer.engine.neurons.difference_lens import corpus_sequences, measure_difference
from neuron_explorer.spec.settings import RecordingSettings

BIAS_LAYER = 1


def add_bias(model) -> None:
    bias = model.transformer.h[BIAS_LAYER].mlp.c_proj.bias
    bias += torch.randn(bias.shape, generator=torch.Generator().manual_seed(4)) * 2.0


def test_an_identical_pair_differs_nowhere(tiny_models, one_torch_thread):
    pre = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")
    same = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")
    found = measure_difference(pre, same, corpus_sequences(pre, window=16, n_windows=3), "corpus")
    assert found.n_tokens == 48
    assert np.abs(found.mean_difference).max() == 0.0 and found.kl_mean == 0.0 and found.kl_max == 0.0


def test_a_bias_in_one_layer_is_decoded_as_that_bias(tiny_models, edited_copy, tmp_path, one_torch_thread):
    tuned = edited_copy(tiny_models["gpt2"], tmp_path / "biased", edit=add_bias)
    pre = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")
    dpo = load_model(str(tuned), device="cpu", dtype="float32")
    found = measure_difference(pre, dpo, corpus_sequences(pre, window=16, n_windows=3), "corpus")
    base = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    changed = AutoModelForCausalLM.from_pretrained(tuned)
    bias = (changed.transformer.h[BIAS_LAYER].mlp.c_proj.bias - base.transformer.h[BIAS_LAYER].mlp.c_proj.bias).detach()
    assert np.abs(found.mean_difference[:BIAS_LAYER]).max() == 0.0
    np.testing.assert_allclose(found.mean_difference[BIAS_LAYER], bias.numpy(), rtol=1e-4, atol=1e-5)
    assert found.kl_mean > 0
    w = torch.randn(32, generator=torch.Generator().manual_seed(3)).double()
    arrays = found.arrays(pre, (w / w.norm()).numpy(), k=5)
    # GPT-2's final LayerNorm centres and scales by its gain, then the tied unembedding
    logits = ((bias - bias.mean()) * base.transformer.ln_f.weight.detach()) @ base.lm_head.weight.detach().T
    assert arrays["top_tokens"][BIAS_LAYER].tolist() == torch.topk(logits, 5).indices.tolist()
    assert arrays["bottom_tokens"][BIAS_LAYER].tolist() == torch.topk(logits, 5, largest=False).indices.tolist()
    assert arrays["probe_projection"][BIAS_LAYER] == pytest.approx(float(bias.double() @ (w / w.norm())), rel=1e-5)


def test_compute_stores_both_sources(tiny_models, edited_copy, tmp_path, one_torch_thread):
    root = tmp_path
    (root / "prompts.txt").write_text("You are a stupid\nThe river runs\nI hate you\n")
    base, tuned = tiny_models["llama"], edited_copy(tiny_models["llama"], root / "noisy", noise=0.02)
    result = run_compute(
        ComputeSettings(
            base=str(base),
            tuned=str(tuned),
            probe="toxic-embedding",
            prompts=str(root / "prompts.txt"),
            output=root / "diff.h5",
            device="cpu",
            dtype="float32",
            recording=RecordingSettings(new_tokens=4),
            cluster_top_k=20,
            n_clusters=2,
            patch_holdout=0.0,
        )
    )
    with CacheReader(result.path) as reader:
        found = reader.differences()
        assert reader.dynamics() is None  # one tuned model: no series
    assert set(found) == {"corpus", "prompts"}
    for source in found.values():
        assert source["arrays"]["mean_difference"].shape == (3, 32)
        assert source["arrays"]["top_tokens"].shape == (3, 10)
        assert source["attrs"]["n_tokens"] > 0 and source["attrs"]["kl_mean"] > 0
    assert found["prompts"]["attrs"]["n_texts"] == 3
