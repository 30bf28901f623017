"""The identity of METHOD §2, measured by the independent pass of engine/identity_check.py, on tiny random-weight
models of every supported architecture and every positions mode; position bugs injected into the recorder that the
check must catch; and the recording protocols checked against the authors' uncached loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GemmaConfig, GPTNeoXConfig, MistralConfig, Qwen2Config

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.model.architectures import architecture_for
from neuron_explorer.engine.model.generation import encode_prompts
from neuron_explorer.engine.model.loading import LoadedModel, load_model
from neuron_explorer.engine.model.weights import probe_projections
from neuron_explorer.engine.neurons import recording as recording_module
from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
from neuron_explorer.engine.neurons.identity_check import check_identity, sample_prompts
from neuron_explorer.engine.neurons.recording import ActivationRecorder, PromptMeans, record_model
from neuron_explorer.engine.neurons.statistics import identity_residuals
from neuron_explorer.spec.settings import POSITION_MODES, RecordingSettings

PROMPTS = [
    "You are a stupid",
    "She walked to the market in the morning and",
    "What the hell",
    "The river runs",
    "I hate you because",
    "The quick brown fox jumps over",
]
TOLERANCE = 1e-4  # of the largest measured layer write

SMALL = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    head_dim=8,
    initializer_range=0.2,
)
NEOX = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.2,
)
EXTRA_CONFIGS = {
    "mistral": lambda: MistralConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "gemma": lambda: GemmaConfig(**SMALL),
    "gemma2": lambda: Gemma2Config(**SMALL),
    "gpt_neox": lambda: GPTNeoXConfig(**NEOX),  # parallel residual: attention and MLP added together
    "gpt_neox_sequential": lambda: GPTNeoXConfig(**NEOX, use_parallel_residual=False),
}


def loaded_in_memory(model, tokenizer) -> LoadedModel:
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tokenizer, arch=architecture_for(model.config.model_type), spec="in-memory", folder=None
    )


def family_model(tiny_models, name: str) -> LoadedModel:
    """A tiny random model of a registered family; every norm gain randomized (Gemma's zero init would hide a
    missing (1 + g))."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(EXTRA_CONFIGS[name]())
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name and param_name.endswith("weight"):
                param.normal_(0.0, 0.5)
    tokenizer = load_model(str(tiny_models["llama"]), device="cpu").tokenizer
    return loaded_in_memory(model, tokenizer)


def random_unit(d: int, seed: int = 1) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=d).astype(np.float32)
    return w / np.linalg.norm(w)


def identity_check(loaded: LoadedModel, positions: str, **options):
    """Record every prompt, pool their per-prompt means as compute does with all of them as the sample, and run the
    independent check; (recording, pooled means, check)."""
    unit = random_unit(loaded.d_model)
    sample = np.arange(len(PROMPTS))
    pool = PromptMeans(
        loaded.arch.n_layers(loaded.model),
        loaded.arch.d_mlp(loaded.model),
        loaded.arch.output_norm_path is not None,
        sample,
    )
    recording = record_model(loaded, PROMPTS, positions=positions, new_tokens=5, batch_size=4, sink=pool.add, **options)
    check = check_identity(
        loaded,
        PROMPTS,
        recording,
        sample,
        unit,
        probe_projections(loaded, unit),
        pool.written_mean("sample"),
        positions=positions,
        max_prompt_tokens=32,
    )
    return recording, pool, check


def relative(residual: np.ndarray, measured: np.ndarray) -> float:
    return float(np.abs(residual).max() / np.abs(measured).max())


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("positions", POSITION_MODES)
def test_identity_holds_against_the_residual_stream(tiny_models, kind, positions):
    loaded = load_model(str(tiny_models[kind]), device="cpu", dtype="float32")
    recording, pool, check = identity_check(loaded, positions)
    assert check.n_positions == recording.n_positions == pool.n_positions["sample"]
    assert relative(check.residual, check.measured) < TOLERANCE, (check.residual, check.measured)
    assert check.passed and check.relative.max() < TOLERANCE


@pytest.mark.parametrize("positions", POSITION_MODES)
@pytest.mark.parametrize("name", sorted(EXTRA_CONFIGS))
def test_identity_holds_for_every_registered_family(tiny_models, name, positions):
    recording, _, check = identity_check(family_model(tiny_models, name), positions)
    assert check.n_positions == recording.n_positions
    assert relative(check.residual, check.measured) < TOLERANCE, (check.residual, check.measured)
    assert check.passed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_neox"])
def test_identity_holds_at_any_precision(tiny_models, name, dtype):
    """In half precision the residual stream minus itself cannot resolve an MLP's write; read where the block takes it,
    the write is rounded once to the dtype, and the check passes within a tolerance derived from it (and fails a
    position bug: test_the_check_catches_a_position_bug_that_the_same_hook_comparison_misses)."""
    loaded = (
        load_model(str(tiny_models["llama"]), device="cpu", dtype="float32")
        if name == "llama"
        else family_model(tiny_models, name)
    )
    loaded.model.to(dtype)
    for positions in ("generated", "predicting"):
        _, _, check = identity_check(loaded, positions)
        assert check.tolerance == max(8 * torch.finfo(dtype).eps / 2, 1e-4)
        assert check.passed, (positions, check.relative.max(), check.tolerance)
        assert check.relative.max() < check.tolerance / 4  # a margin, not a coin toss


@pytest.mark.parametrize("name", sorted(EXTRA_CONFIGS))
def test_compute_writes_a_checked_cache_for_every_registered_family(tiny_models, edited_copy, tmp_path, name):
    base = tmp_path / "base"
    loaded = family_model(tiny_models, name)
    loaded.model.save_pretrained(base)
    loaded.tokenizer.save_pretrained(base)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    torch.save(torch.as_tensor(random_unit(loaded.d_model)), tmp_path / "probe.pt")
    result = run_compute(
        ComputeSettings(
            base=str(base),
            tuned=str(edited_copy(base, tmp_path / "tuned", noise=0.02)),
            probe=str(tmp_path / "probe.pt"),
            prompts=str(tmp_path / "prompts.txt"),
            output=tmp_path / "cache.h5",
            device="cpu",
            dtype="float32",
            recording=RecordingSettings(new_tokens=4),
            cluster_top_k=20,
            n_clusters=2,
        )
    )
    with CacheReader(result.path) as reader:
        layers = reader.layers()
        assert reader.info.architecture == loaded.arch.name
    for model in ("pre", "dpo"):
        assert relative(layers[f"residual_{model}"].to_numpy(), layers[f"mlp_proj_{model}"].to_numpy()) < TOLERANCE


def test_gemma2_statistics_use_what_the_output_norm_writes(tiny_models):
    """With the norm's gain and per-token 1/rms ignored (ā times raw v_i·ŵ, as the authors' hooks computed it) the
    identity fails on Gemma-2; the registry's written direction (1 + g) ⊙ v_i and the mean of m·s_t make it hold."""
    loaded = family_model(tiny_models, "gemma2")
    recording, pool, check = identity_check(loaded, "generated")
    assert relative(check.residual, check.measured) < TOLERANCE
    unit = torch.as_tensor(random_unit(loaded.d_model), dtype=torch.float64)
    blocks = loaded.model.model.layers
    raw_p = np.stack([(block.mlp.down_proj.weight.detach().T.double() @ unit).numpy() for block in blocks])
    naive = identity_residuals(written_mean=pool.act_mean("sample"), p=raw_p, bias_proj=0.0, measured=check.measured)
    assert relative(naive, check.measured) > 0.05
    gain = 1 + blocks[0].post_feedforward_layernorm.weight.detach()
    np.testing.assert_allclose(
        loaded.arch.value_vectors(loaded.model, 0).detach().numpy(),
        (blocks[0].mlp.down_proj.weight.detach().T * gain).numpy(),
        rtol=1e-6,
    )


class SameHookRecorder(ActivationRecorder):
    """The recorder plus the old same-hook measurement: (MLP output · ŵ) summed over the recorder's own selection."""

    unit: np.ndarray | None = None  # the probe, set by the test
    last: SameHookRecorder | None = None  # the instance record_model made

    def __init__(self, loaded):
        super().__init__(loaded)
        SameHookRecorder.last = self
        self.proj_total = np.zeros(len(self.modules))

    def _make_hook(self, layer):
        record = super()._make_hook(layer)
        probe = torch.as_tensor(self.unit)

        def hook(module, inputs, output):
            record(module, inputs, output)
            if not (isinstance(self._selection, int) and self._selection == 0):
                self.proj_total[layer] += float(self.selected_sum(output.float() @ probe).sum())

        return hook


class PaddingAveragedIn(SameHookRecorder):
    def select(self, selection):
        super().select(torch.ones_like(selection) if isinstance(selection, torch.Tensor) else selection)


@pytest.mark.parametrize("bug", ["padding averaged in", "one position off"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_check_catches_a_position_bug_that_the_same_hook_comparison_misses(tiny_models, monkeypatch, bug, dtype):
    """At any precision: in bfloat16 the check still passes a correct recording (test_identity_holds_at_any_precision)
    and fails a wrong one."""
    loaded = load_model(str(tiny_models["llama"]), device="cpu", dtype=dtype)
    unit = random_unit(loaded.d_model)
    monkeypatch.setattr(SameHookRecorder, "unit", unit)
    if bug == "padding averaged in":
        positions = "prompt"
        monkeypatch.setattr(recording_module, "ActivationRecorder", PaddingAveragedIn)
    else:  # the old mislabel: "generated" recording what the positions predicting the new tokens see
        positions = "generated"
        monkeypatch.setattr(recording_module, "ActivationRecorder", SameHookRecorder)
        monkeypatch.setitem(recording_module.PROTOCOLS, "generated", recording_module.PROTOCOLS["predicting"])
    recording, _, check = identity_check(loaded, positions)
    same_hook = SameHookRecorder.last.proj_total / recording.n_positions
    weights = probe_projections(loaded, unit)
    old_residual = identity_residuals(
        written_mean=recording.act_mean, p=weights["p"], bias_proj=weights["bias_proj"], measured=same_hook
    )
    assert relative(old_residual, same_hook) < max(TOLERANCE, check.tolerance)  # the old check passed
    assert relative(check.residual, check.measured) > 100 * TOLERANCE  # the independent one fails
    assert not check.passed and check.relative.max() > 0.05


def uncached_greedy(model, prompt_ids: torch.Tensor, new_tokens: int, eos: int) -> torch.Tensor:
    """The authors' loop: `new_tokens` full passes without a cache, each reading the last position's logits."""
    ids = prompt_ids
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        logits[eos] = float("-inf")
        ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids


def activations_of(loaded: LoadedModel, ids: torch.Tensor) -> dict[int, np.ndarray]:
    """Per layer, the MLP output projection's input (T, d_mlp) in one full uncached pass over `ids`."""
    arch, model = loaded.arch, loaded.model
    captured = {}
    handles = [
        arch.out_proj(model, layer).register_forward_hook(
            lambda module, inputs, output, layer=layer: captured.__setitem__(layer, inputs[0][0].double().numpy())
        )
        for layer in range(arch.n_layers(model))
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return captured


@pytest.mark.parametrize("positions", ["predicting", "generated"])
def test_kv_cache_recording_equals_the_authors_uncached_protocol(tiny_models, positions):
    """ā from recording during cached generation equals ā from the authors' uncached code with the same tokens:
    predicting (v1, TransformerLens): `new_tokens` full passes, each read at its last position; generated (v3, HF):
    one full pass over prompt + all new tokens, read at the generated tokens' positions."""
    loaded = load_model(str(tiny_models["llama"]), device="cpu", dtype="float32")
    new_tokens = 6
    recording = record_model(loaded, PROMPTS, positions=positions, new_tokens=new_tokens, batch_size=3)
    sums = np.zeros_like(recording.act_mean)
    for index, prompt in enumerate(PROMPTS):
        prompt_ids, _ = encode_prompts(loaded.tokenizer, [prompt])
        ids = uncached_greedy(loaded.model, prompt_ids, new_tokens, loaded.tokenizer.eos_token_id)
        assert ids[0, -new_tokens:].tolist() == recording.continuation_ids[index // 3][index % 3].tolist()
        length = prompt_ids.shape[1]
        read = slice(length - 1, length + new_tokens - 1) if positions == "predicting" else slice(length, None)
        for layer, acts in activations_of(loaded, ids).items():
            sums[layer] += acts[read].sum(0)
    np.testing.assert_allclose(recording.act_mean, sums / (len(PROMPTS) * new_tokens), rtol=1e-4, atol=1e-6)
    assert recording.n_positions == len(PROMPTS) * new_tokens


@pytest.mark.parametrize("positions", POSITION_MODES)
def test_shared_continuation_reads_the_same_positions(tiny_models, positions):
    """A model recorded with teacher forcing on its own continuation gives the same ā as while generating it."""
    loaded = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")
    own = record_model(loaded, PROMPTS, positions=positions, new_tokens=5, batch_size=4)
    forced = record_model(
        loaded, PROMPTS, positions=positions, new_tokens=5, batch_size=4, teacher_tokens=own.continuation_ids
    )
    assert forced.n_positions == own.n_positions
    np.testing.assert_allclose(forced.act_mean, own.act_mean, rtol=1e-4, atol=1e-6)


def test_sample_is_spread_evenly_over_the_prompts():
    assert sample_prompts(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert sample_prompts(3, 32).tolist() == [0, 1, 2]
    assert sample_prompts(7, None).tolist() == list(range(7))


def test_hooks_are_removed_even_when_the_model_raises(tiny_models):
    loaded = load_model(str(tiny_models["llama"]), device="cpu")
    modules = [loaded.arch.out_proj(loaded.model, layer) for layer in range(3)]

    def boom(module, inputs):
        raise RuntimeError("boom")

    handle = loaded.model.model.layers[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        record_model(loaded, PROMPTS, new_tokens=2)
    handle.remove()
    assert all(not module._forward_hooks for module in modules)
