"""Correctness of the interventions on tiny random-weight GPT-2 and Llama models (METHOD §4)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from neuron_explorer.engine import interventions as iv
from neuron_explorer.engine.defaults import PATCH_MODES
from neuron_explorer.engine.generation import encode_prompts, generate_tokens
from neuron_explorer.engine.hooks import forward_hooks
from neuron_explorer.engine.neuron_sets import NeuronSelection
from neuron_explorer.errors import UserError

KINDS = ["gpt2", "llama"]
TEXTS = ["You are a stupid idiot and", "The river runs through the village", "What the hell"]


def inputs(loaded):
    ids, mask = encode_prompts(loaded.tokenizer, TEXTS, 32, "cpu")
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}


def every_neuron(loaded) -> NeuronSelection:
    n_layers, d_mlp = loaded.arch.n_layers(loaded.model), loaded.arch.d_mlp(loaded.model)
    pairs = [(layer, i) for layer in range(n_layers) for i in range(d_mlp)]
    return NeuronSelection.from_pairs(pairs, n_layers=n_layers, d_mlp=d_mlp)


def some_neurons(loaded, seed: int = 0, per_layer: int = 5) -> NeuronSelection:
    rng = np.random.default_rng(seed)
    n_layers, d_mlp = loaded.arch.n_layers(loaded.model), loaded.arch.d_mlp(loaded.model)
    pairs = [(layer, int(i)) for layer in range(n_layers) for i in rng.choice(d_mlp, per_layer, replace=False)]
    return NeuronSelection.from_pairs(pairs, n_layers=n_layers, d_mlp=d_mlp)


def mlp_outputs(loaded, **kwargs) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Each layer's MLP output projection output (the MLP output) and the logits."""
    arch, model = loaded.arch, loaded.model
    seen = {}

    def keep(layer):
        return lambda module, args, output: seen.__setitem__(layer, output.detach().clone())

    with forward_hooks([(arch.out_proj(model, layer), keep(layer)) for layer in range(arch.n_layers(model))]), \
            torch.no_grad():
        logits = model(**kwargs).logits
    return seen, logits


@pytest.mark.parametrize("kind", KINDS)
def test_patching_own_per_token_activations_is_exactly_a_no_op(loaded_pairs, kind):
    base, _ = loaded_pairs[kind]
    kwargs = inputs(base)
    acts, output = iv.record_activations(base, **kwargs)
    with iv.patch_tokens(base, every_neuron(base), acts).hooks(), torch.no_grad():
        patched = base.model(**kwargs).logits
    assert torch.equal(patched, output.logits)
    assert iv.hook_count(base) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_patching_every_neuron_with_dpo_activations_reproduces_dpo_mlp_outputs(loaded_pairs, kind):
    base, tuned = loaded_pairs[kind]
    kwargs = inputs(base)
    dpo_acts, _ = iv.record_activations(tuned, **kwargs)
    dpo_mlp, dpo_logits = mlp_outputs(tuned, **kwargs)
    arch = base.arch
    n_layers = arch.n_layers(base.model)

    # With the DPO model's MLP output weights, every layer's MLP output is the DPO model's, exactly.
    hybrid = copy.deepcopy(base)
    with torch.no_grad():
        for layer in range(n_layers):
            arch.out_proj(hybrid.model, layer).load_state_dict(arch.out_proj(tuned.model, layer).state_dict())
    with iv.patch_tokens(hybrid, every_neuron(hybrid), dpo_acts).hooks():
        hybrid_mlp, hybrid_logits = mlp_outputs(hybrid, **kwargs)
    for layer in range(n_layers):
        assert torch.equal(hybrid_mlp[layer], dpo_mlp[layer]), layer
    # ... but not its logits: attention, norms and the rest of the MLP changed too.
    assert not torch.allclose(hybrid_logits, dpo_logits, atol=1e-4)

    # With the base model's own output weights, what differs is exactly (W_pre − W_dpo) m_dpo + (b_pre − b_dpo).
    with iv.patch_tokens(base, every_neuron(base), dpo_acts).hooks():
        base_mlp, _ = mlp_outputs(base, **kwargs)
    for layer in range(n_layers):
        v_pre = arch.value_vectors(base.model, layer).detach()
        v_dpo = arch.value_vectors(tuned.model, layer).detach()
        expected = dpo_acts[layer] @ (v_pre - v_dpo)
        b_pre, b_dpo = arch.out_bias(base.model, layer), arch.out_bias(tuned.model, layer)
        if b_pre is not None:
            expected = expected + (b_pre - b_dpo).detach()
        torch.testing.assert_close(base_mlp[layer] - dpo_mlp[layer], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(base_mlp[layer], dpo_mlp[layer], atol=1e-4)
    assert iv.hook_count(base) == iv.hook_count(hybrid) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_zero_ablating_value_vectors_equals_zeroing_the_weights(loaded_pairs, kind):
    base, _ = loaded_pairs[kind]
    kwargs = inputs(base)
    selection = some_neurons(base, per_layer=7)
    with iv.zero_ablate(base, selection).hooks(), torch.no_grad():
        hooked = base.model(**kwargs).logits
    zeroed = copy.deepcopy(base)
    with torch.no_grad():
        for layer, indices in selection.by_layer().items():
            weight = zeroed.arch.out_proj(zeroed.model, layer).weight
            if zeroed.arch.value_vectors_in_rows:
                weight[indices, :] = 0
            else:
                weight[:, indices] = 0
        expected = zeroed.model(**kwargs).logits
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(base.model(**kwargs).logits, expected, atol=1e-4)


def test_hooks_come_off_after_every_run_including_one_that_raised(loaded_pairs):
    base, _ = loaded_pairs["llama"]
    selection = some_neurons(base)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    means = np.full((n_layers, d_mlp), 0.5)
    built = [iv.patch_mean(base, selection, means), iv.add_shift(base, selection, means),
             iv.scale(base, selection, 0.3), iv.set_constant(base, selection, 1.0), iv.zero_ablate(base, selection),
             iv.mean_ablate(base, selection, means),
             iv.tuning_free(base, means, np.random.default_rng(0).normal(size=(n_layers, d_mlp))),
             iv.subtract_direction(base, np.ones(base.d_model), 2.0),
             iv.patch_live(base, selection, loaded_pairs["llama"][1])]
    assert {i.mode for i in built} == set(PATCH_MODES)
    kwargs = inputs(base)
    for intervention in built:
        with intervention.hooks():
            assert iv.hook_count(base) > 0
            with torch.no_grad():
                base.model(**kwargs)
        assert iv.hook_count(base) == 0
        with pytest.raises(RuntimeError, match="boom"):
            with intervention.hooks():
                raise RuntimeError("boom")
        assert iv.hook_count(base) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_each_mode_sets_the_activations_it_promises(loaded_pairs, kind):
    base, _ = loaded_pairs[kind]
    kwargs = inputs(base)
    selection = some_neurons(base, seed=3)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    target = np.random.default_rng(1).normal(size=(n_layers, d_mlp))
    plain, _ = iv.record_activations(base, **kwargs)
    cases = [(iv.patch_mean(base, selection, target), lambda m, t: torch.full_like(m, 0) + t),
             (iv.add_shift(base, selection, target, alpha=0.5), lambda m, t: m - 0.5 * t),
             (iv.scale(base, selection, 0.25), lambda m, t: 0.25 * m),
             (iv.set_constant(base, selection, 2.0), lambda m, t: torch.full_like(m, 2.0)),
             (iv.mean_ablate(base, selection, target), lambda m, t: torch.full_like(m, 0) + t)]
    for intervention, expected in cases:
        # what the output projection receives: record m with a pre-hook registered after the intervention's
        with intervention.hooks():
            seen, _ = iv.record_activations(base, **kwargs)
        for layer, indices in selection.by_layer().items():
            if intervention.mode in ("shift", "scale") and layer > 0:
                continue  # per-token edits of later layers act on activations that earlier edits changed
            t = torch.as_tensor(target[layer, indices], dtype=torch.float32)
            want = expected(plain[layer][..., indices], t)
            torch.testing.assert_close(seen[layer][..., indices], want, rtol=1e-5, atol=1e-6)
            if layer == 0:  # later layers see the edited residual stream; the first sees only its own edit
                others = np.setdiff1d(np.arange(d_mlp), indices)
                assert torch.equal(seen[layer][..., others], plain[layer][..., others])


@pytest.mark.parametrize("kind", KINDS)
def test_newest_position_touches_only_the_last_position_of_each_call(loaded_pairs, kind):
    base, _ = loaded_pairs[kind]
    kwargs = inputs(base)
    selection = some_neurons(base, per_layer=20)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    target = np.full((n_layers, d_mlp), 3.0)
    with torch.no_grad():
        plain = base.model(**kwargs).logits
        with iv.patch_mean(base, selection, target, positions="newest").hooks():
            newest = base.model(**kwargs).logits
        with iv.patch_mean(base, selection, target, positions="all").hooks():
            everywhere = base.model(**kwargs).logits
    assert torch.equal(newest[:, :-1], plain[:, :-1])  # causal: earlier positions never see the last one
    assert not torch.allclose(newest[:, -1], plain[:, -1], atol=1e-4)
    assert not torch.allclose(everywhere[:, :-1], plain[:, :-1], atol=1e-4)


def test_newest_position_in_the_kv_cache_loop_equals_uncached_passes(loaded_pairs):
    """In generation every single-token step is the newest position: cached generation under the newest-position
    patch equals re-running the whole sequence without cache for each token with the last position patched."""
    base, _ = loaded_pairs["llama"]
    ids, mask = encode_prompts(base.tokenizer, TEXTS[:1], 32, "cpu")
    selection = some_neurons(base, per_layer=10)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    target = np.random.default_rng(2).normal(size=(n_layers, d_mlp)) * 2
    patch = iv.patch_mean(base, selection, target, positions="newest")
    with patch.hooks():
        cached = generate_tokens(base.model, ids, mask, 6)
        sequence = ids
        uncached = []
        with torch.no_grad():
            for _ in range(6):
                logits = base.model(input_ids=sequence, use_cache=False).logits[:, -1]
                token = logits.argmax(-1)
                uncached.append(token)
                sequence = torch.cat([sequence, token[:, None]], dim=1)
    assert torch.equal(cached, torch.stack(uncached, dim=1))


@pytest.mark.parametrize("kind", KINDS)
def test_residual_subtraction_moves_the_last_block_output_along_the_probe(loaded_pairs, kind):
    base, _ = loaded_pairs[kind]
    kwargs = inputs(base)
    direction = np.random.default_rng(4).normal(size=base.d_model)
    unit = torch.as_tensor(direction / np.linalg.norm(direction), dtype=torch.float32)
    last = base.arch.layers(base.model)[-1]
    seen = []

    def keep(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    with torch.no_grad():
        with forward_hooks([(last, keep)]):
            base.model(**kwargs)
        with iv.subtract_direction(base, direction, 1.5).hooks(), forward_hooks([(last, keep)]):
            base.model(**kwargs)
    torch.testing.assert_close(seen[1], seen[0] - 1.5 * unit, rtol=1e-5, atol=1e-5)
    assert iv.hook_count(base) == 0


def test_tuning_free_selection_takes_beta_of_each_sign_class_by_the_right_end():
    rng = np.random.default_rng(0)
    act = rng.normal(size=(3, 40))
    cos = rng.normal(size=(3, 40)) * 0.2
    chosen = iv.tuning_free_selection(act, cos, 0.5)
    classes = {"TP": (cos > 0) & (act > 0), "TN": (cos > 0) & (act <= 0), "AP": (cos <= 0) & (act > 0),
               "AN": (cos <= 0) & (act <= 0)}
    for name, members in classes.items():
        mask = chosen[name]
        assert mask.sum() == round(0.5 * members.sum()) and not (mask & ~members).any()
        inside, outside = np.abs(cos[mask]), np.abs(cos[members & ~mask])
        if name in ("TP", "AN"):
            assert inside.min() >= outside.max()
        else:
            assert inside.max() <= outside.min()
    with pytest.raises(UserError, match="β"):
        iv.tuning_free_selection(act, cos, 0)


def test_tuning_free_clamps_to_one_minus_and_one_plus_alpha(loaded_pairs):
    base, _ = loaded_pairs["llama"]
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    rng = np.random.default_rng(5)
    act, cos = rng.normal(size=(n_layers, d_mlp)), rng.normal(size=(n_layers, d_mlp))
    edit = iv.tuning_free(base, act, cos, alpha=0.1, beta=0.5)
    classes = iv.tuning_free_selection(act, cos, 0.5)
    assert edit.n_neurons == sum(int(m.sum()) for m in classes.values())
    kwargs = inputs(base)
    with edit.hooks():
        seen, _ = iv.record_activations(base, **kwargs)
    for name, mask in classes.items():
        factor = 0.9 if name in ("TP", "AN") else 1.1
        layers, indices = np.nonzero(mask)
        for layer, index in list(zip(layers, indices))[:10]:
            value = seen[layer][..., index]
            torch.testing.assert_close(value, torch.full_like(value, factor * act[layer, index]))


def test_bad_shapes_and_positions_are_clear_errors(loaded_pairs):
    base, _ = loaded_pairs["llama"]
    selection = some_neurons(base)
    with pytest.raises(UserError, match="shape"):
        iv.patch_mean(base, selection, np.zeros((2, 2)))
    with pytest.raises(UserError, match="positions"):
        iv.zero_ablate(base, selection, positions="first")


@pytest.mark.parametrize("kind", KINDS)
def test_live_donor_patching_equals_recorded_per_token_patching(loaded_pairs, kind):
    base, tuned = loaded_pairs[kind]
    kwargs = inputs(base)
    selection = some_neurons(base, per_layer=30)
    acts, _ = iv.record_activations(tuned, **kwargs)
    with torch.no_grad():
        with iv.patch_tokens(base, selection, acts).hooks():
            recorded = base.model(**kwargs).logits
        with iv.patch_live(base, selection, tuned).hooks():
            live = base.model(**kwargs).logits
    assert torch.equal(live, recorded)
    assert iv.hook_count(base) == iv.hook_count(tuned) == 0


def test_live_donor_in_the_kv_cache_loop_equals_uncached_passes(loaded_pairs):
    """The donor keeps its own KV cache in step with the patched model's generation."""
    base, tuned = loaded_pairs["llama"]
    ids, mask = encode_prompts(base.tokenizer, TEXTS, 32, "cpu")
    selection = every_neuron(base)
    with iv.patch_live(base, selection, tuned).hooks():
        cached = generate_tokens(base.model, ids, mask, 5)
        sequence, full_mask, uncached = ids, mask, []
        with torch.no_grad():
            for _ in range(5):
                positions = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
                logits = base.model(input_ids=sequence, attention_mask=full_mask, position_ids=positions,
                                    use_cache=False).logits[:, -1]
                token = logits.argmax(-1)
                uncached.append(token)
                sequence = torch.cat([sequence, token[:, None]], dim=1)
                full_mask = torch.cat([full_mask, torch.ones_like(token[:, None])], dim=1)
    assert torch.equal(cached, torch.stack(uncached, dim=1))
    assert iv.hook_count(base) == iv.hook_count(tuned) == 0
