"""The identities of METHOD §2 on tiny random-weight models of every supported architecture, and the recording
protocol checked against the authors' uncached loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, GemmaConfig, Gemma2Config, GPTNeoXConfig, MistralConfig,
                          Qwen2Config)

from neuron_explorer.engine.architectures import architecture_for
from neuron_explorer.engine.generation import encode_prompts
from neuron_explorer.engine.models import LoadedModel, load_model
from neuron_explorer.engine.recording import record_model
from neuron_explorer.engine.statistics import identity_residuals
from neuron_explorer.engine.weights import probe_projections

PROMPTS = ["You are a stupid", "She walked to the market in the morning and", "What the hell", "The river runs",
           "I hate you because", "The quick brown fox jumps over"]

SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, head_dim=8)
EXTRA_CONFIGS = {
    "mistral": lambda: MistralConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "gemma": lambda: GemmaConfig(**SMALL),
    "gemma2": lambda: Gemma2Config(**SMALL),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=128),
}


def loaded_in_memory(model, tokenizer) -> LoadedModel:
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=architecture_for(model.config.model_type),
                       spec="in-memory", folder=None)


def random_unit(d: int, seed: int = 1) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=d).astype(np.float32)
    return w / np.linalg.norm(w)


def assert_identity(loaded: LoadedModel, **options) -> None:
    unit = random_unit(loaded.d_model)
    recording = record_model(loaded, PROMPTS, unit, batch_size=4, **options)
    weights = probe_projections(loaded, unit)
    residual = identity_residuals(act_mean=recording.act_mean, p=weights["p"], bias_proj=weights["bias_proj"],
                                  mlp_proj=recording.mlp_proj)
    scale = np.maximum(np.abs(recording.mlp_proj), 1e-3)
    assert np.all(np.abs(residual) / scale < 1e-4), (residual, recording.mlp_proj)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("positions", ["generated", "prompt", "all"])
def test_identity_holds_per_layer(tiny_models, kind, positions):
    assert_identity(load_model(str(tiny_models[kind]), device="cpu", dtype="float32"), positions=positions,
                    new_tokens=5)


@pytest.mark.parametrize("model_type", sorted(EXTRA_CONFIGS))
def test_identity_holds_for_every_registered_family(tiny_models, model_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(EXTRA_CONFIGS[model_type]())
    tokenizer = load_model(str(tiny_models["llama"]), device="cpu").tokenizer
    assert_identity(loaded_in_memory(model, tokenizer), new_tokens=4)


def test_kv_cache_recording_equals_the_authors_uncached_protocol(tiny_models):
    """ā from recording during cached generation equals ā from `new_tokens` full uncached passes that each read
    the last position, as in the authors' code; the continuation is the same too."""
    loaded = load_model(str(tiny_models["llama"]), device="cpu", dtype="float32")
    new_tokens = 6
    recording = record_model(loaded, PROMPTS, random_unit(loaded.d_model), new_tokens=new_tokens, batch_size=3)
    arch, model = loaded.arch, loaded.model
    sums = np.zeros_like(recording.act_mean)
    captured = {}
    handles = [arch.out_proj(model, layer).register_forward_hook(
        lambda module, inputs, output, layer=layer: captured.__setitem__(layer, inputs[0][0, -1].double().numpy()))
        for layer in range(arch.n_layers(model))]
    eos = loaded.tokenizer.eos_token_id
    try:
        for index, prompt in enumerate(PROMPTS):
            ids, _ = encode_prompts(loaded.tokenizer, [prompt])
            for _ in range(new_tokens):
                with torch.no_grad():
                    logits = model(input_ids=ids).logits[0, -1]
                logits[eos] = float("-inf")
                for layer, acts in captured.items():
                    sums[layer] += acts
                ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
            assert ids[0, -new_tokens:].tolist() == recording.continuation_ids[index // 3][index % 3].tolist()
    finally:
        for handle in handles:
            handle.remove()
    np.testing.assert_allclose(recording.act_mean, sums / (len(PROMPTS) * new_tokens), rtol=1e-4, atol=1e-6)
    assert recording.n_positions == len(PROMPTS) * new_tokens


def test_shared_continuation_reads_the_other_models_tokens(tiny_models):
    """A model recorded on its own continuation with teacher forcing gives the same ā as while generating it."""
    loaded = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")
    unit = random_unit(loaded.d_model)
    own = record_model(loaded, PROMPTS, unit, new_tokens=5, batch_size=4)
    forced = record_model(loaded, PROMPTS, unit, new_tokens=5, batch_size=4, teacher_tokens=own.continuation_ids)
    np.testing.assert_allclose(forced.act_mean, own.act_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(forced.mlp_proj, own.mlp_proj, rtol=1e-4, atol=1e-6)


def test_hooks_are_removed_even_when_the_model_raises(tiny_models):
    loaded = load_model(str(tiny_models["llama"]), device="cpu")
    modules = [loaded.arch.out_proj(loaded.model, layer) for layer in range(3)]

    def boom(module, inputs):
        raise RuntimeError("boom")

    handle = loaded.model.model.layers[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        record_model(loaded, PROMPTS, random_unit(loaded.d_model), new_tokens=2)
    handle.remove()
    assert all(not module._forward_hooks for module in modules)
