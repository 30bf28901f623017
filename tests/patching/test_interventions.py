"""Correctness of the interventions on tiny random-weight GPT-2 and Llama models (METHOD §4), each checked against
the same edit made by hand: on a copy of the weights, with a hand-written hook, or by Hugging Face's own loss."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from neuron_explorer.engine.measure.evaluation import perplexity
from neuron_explorer.engine.model.generation import encode_prompts, generate_tokens
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.patching import interventions as iv
from neuron_explorer.engine.patching.modes import MODES
from neuron_explorer.engine.patching.neuron_sets import NeuronSelection
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


def out_projection(loaded, layer: int) -> torch.nn.Module:
    """The MLP's output projection by its Hugging Face name (written here, not taken from the product's registry)."""
    model = loaded.model
    if hasattr(model, "transformer"):
        return model.transformer.h[layer].mlp.c_proj
    return model.model.layers[layer].mlp.down_proj


def hand_edited(loaded, *, clamp=None, shift=None, factor=None, residual=None):
    """A copy of the model whose weights make the edit, per layer: neurons `clamp[layer] = (indices, values)` write
    value·v_i through the bias instead of m_i v_i; `shift[layer] = (indices, s)` adds s·v_i to the bias;
    `factor[layer] = (indices, f)` scales their value vectors; `residual` is added to the last block's output
    (through its MLP bias, the block's last write)."""
    edited = copy.deepcopy(loaded)
    n_layers = len(edited.model.transformer.h if hasattr(edited.model, "transformer") else edited.model.model.layers)

    def parts(layer):
        proj = out_projection(edited, layer)
        if proj.bias is None:
            proj.bias = torch.nn.Parameter(torch.zeros(proj.weight.shape[0]))
        rows = proj.weight if hasattr(edited.model, "transformer") else proj.weight.T  # (d_mlp, d_model) views
        return rows, proj.bias

    with torch.no_grad():
        for layer, (indices, values) in (clamp or {}).items():
            rows, bias = parts(layer)
            bias += torch.as_tensor(values, dtype=torch.float32) @ rows[indices]
            rows[indices] = 0
        for layer, (indices, values) in (shift or {}).items():
            rows, bias = parts(layer)
            bias += torch.as_tensor(values, dtype=torch.float32) @ rows[indices]
        for layer, (indices, value) in (factor or {}).items():
            rows, _ = parts(layer)
            rows[indices] *= value
        if residual is not None:
            _, bias = parts(n_layers - 1)
            bias += torch.as_tensor(residual, dtype=torch.float32)
    return edited


def hf_perplexity(model, windows: list[list[int]]) -> float:
    """exp of Hugging Face's own mean next-token loss (`labels=input_ids`), over equal-length windows."""
    with torch.no_grad():
        losses = [float(model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss) for w in windows]
    return math.exp(sum(losses) / len(losses))


def random_windows(loaded, n: int = 3, length: int = 24, seed: int = 0) -> list[list[int]]:
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    return np.random.default_rng(seed).integers(1, vocab, size=(n, length)).tolist()


def mlp_outputs(loaded, **kwargs) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Each layer's MLP output projection output (the MLP output) and the logits."""
    arch, model = loaded.arch, loaded.model
    seen = {}

    def keep(layer):
        return lambda module, args, output: seen.__setitem__(layer, output.detach().clone())

    with (
        forward_hooks([(arch.out_proj(model, layer), keep(layer)) for layer in range(arch.n_layers(model))]),
        torch.no_grad(),
    ):
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
def test_each_mode_at_every_position_equals_the_same_edit_made_on_a_copy_of_the_weights(loaded_pairs, kind):
    """Logits and perplexity under each hook equal those of a copy whose weights make the edit; perplexity of the
    copy by Hugging Face's own loss, so an all-position edit changes perplexity by exactly what the edit does."""
    base, _ = loaded_pairs[kind]
    kwargs = inputs(base)
    selection = some_neurons(base, seed=6, per_layer=9)
    chosen = selection.by_layer()
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    target = np.random.default_rng(7).normal(size=(n_layers, d_mlp))
    direction = np.random.default_rng(8).normal(size=base.d_model)
    unit = direction / np.linalg.norm(direction)

    def per_layer(values):
        return {layer: (idx, values(layer, idx)) for layer, idx in chosen.items()}

    cases = [
        (iv.patch_mean(base, selection, target), dict(clamp=per_layer(lambda layer, i: target[layer, i]))),
        (iv.mean_ablate(base, selection, target), dict(clamp=per_layer(lambda layer, i: target[layer, i]))),
        (iv.set_constant(base, selection, 1.5), dict(clamp=per_layer(lambda layer, i: np.full(len(i), 1.5)))),
        (iv.zero_ablate(base, selection), dict(clamp=per_layer(lambda layer, i: np.zeros(len(i))))),
        (
            iv.add_shift(base, selection, target, alpha=0.7),
            dict(shift=per_layer(lambda layer, i: -0.7 * target[layer, i])),
        ),
        (iv.scale(base, selection, 0.3), dict(factor=per_layer(lambda layer, i: 0.3))),
        (iv.subtract_direction(base, direction, 2.0), dict(residual=-2.0 * unit)),
    ]
    windows = random_windows(base)
    with torch.no_grad():
        plain = base.model(**kwargs).logits
    plain_ppl, _ = perplexity(base, windows)
    for intervention, edit in cases:
        copy_model = hand_edited(base, **edit)
        with torch.no_grad():
            expected = copy_model.model(**kwargs).logits
            with intervention.hooks():
                hooked = base.model(**kwargs).logits
                hooked_ppl, _ = perplexity(base, windows)
        torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-4, msg=intervention.mode)
        assert not torch.allclose(hooked, plain, atol=1e-3), intervention.mode
        assert hooked_ppl == pytest.approx(hf_perplexity(copy_model.model, windows), rel=1e-4), intervention.mode
        assert hooked_ppl != pytest.approx(plain_ppl, rel=1e-4), intervention.mode
    assert iv.hook_count(base) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_perplexity_is_hugging_faces_own_loss_exponentiated(loaded_pairs, kind):
    base, _ = loaded_pairs[kind]
    windows = random_windows(base, n=5, length=20, seed=1)
    value, count = perplexity(base, windows, batch_size=2)  # 5 windows in batches of 2: a short last batch
    assert count == 5 * 19
    assert value == pytest.approx(hf_perplexity(base.model, windows), rel=1e-5)


def token_by_token_perplexity(loaded, windows: list[list[int]]) -> float:
    """The literal computation: each window fed one token at a time through the KV cache, as generation feeds it,
    each next token scored from the logits of the call that consumed the one before."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            ids = torch.tensor([window])
            cache, logits = None, []
            for t in range(ids.shape[1] - 1):
                out = loaded.model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
                cache = out.cache
                logits.append(out.logits[:, -1].float())
            total += float(torch.nn.functional.cross_entropy(torch.cat(logits), ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return math.exp(total / count)


@pytest.mark.parametrize("kind", KINDS)
def test_newest_position_perplexity_is_measured_as_generation_patches(loaded_pairs, kind):
    """Scoring a window token by token through the KV cache under a newest-position intervention (every token is
    then the newest once, as in generation) equals one pass under the intervention's scoring pass; a plain pass
    under the newest-position hooks would score only unpatched logits and report the unpatched perplexity."""
    base, tuned = loaded_pairs[kind]
    selection = some_neurons(base, seed=9, per_layer=12)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    target = np.random.default_rng(10).normal(size=(n_layers, d_mlp)) * 2
    windows = random_windows(base, n=2, length=16, seed=2)
    plain, _ = perplexity(base, windows)
    for intervention in (
        iv.patch_mean(base, selection, target, positions="newest"),
        iv.add_shift(base, selection, target, positions="newest"),
        iv.subtract_direction(base, np.random.default_rng(11).normal(size=base.d_model), 3.0, positions="newest"),
        iv.patch_live(base, every_neuron(base), tuned, positions="newest"),
    ):
        with intervention.hooks():
            literal = token_by_token_perplexity(base, windows)
            one_pass_newest, _ = perplexity(base, windows)
        scoring, how = intervention.scoring_pass()
        with scoring.hooks():
            scored, _ = perplexity(base, windows)
        assert scored == pytest.approx(literal, rel=1e-4), intervention.mode
        assert "token by token" in how
        assert scored != pytest.approx(plain, rel=1e-3), intervention.mode
        assert one_pass_newest == plain, intervention.mode  # the defect the scoring pass avoids
    assert iv.hook_count(base) == iv.hook_count(tuned) == 0


def test_a_recorded_donor_has_no_scoring_pass(loaded_pairs):
    base, _ = loaded_pairs["llama"]
    acts, _ = iv.record_activations(base, **inputs(base))
    scoring, how = iv.patch_tokens(base, every_neuron(base), acts).scoring_pass()
    assert scoring is None and how.startswith("n/a")
    patch = iv.zero_ablate(base, some_neurons(base))
    assert patch.scoring_pass() == (patch, iv.ALL_POSITIONS_PASS)


def test_hooks_come_off_after_every_run_including_one_that_raised(loaded_pairs):
    base, _ = loaded_pairs["llama"]
    selection = some_neurons(base)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    means = np.full((n_layers, d_mlp), 0.5)
    built = [
        iv.patch_mean(base, selection, means),
        iv.add_shift(base, selection, means),
        iv.scale(base, selection, 0.3),
        iv.set_constant(base, selection, 1.0),
        iv.zero_ablate(base, selection),
        iv.mean_ablate(base, selection, means),
        iv.tuning_free(base, means, np.random.default_rng(0).normal(size=(n_layers, d_mlp))),
        iv.subtract_direction(base, np.ones(base.d_model), 2.0),
        iv.patch_live(base, selection, loaded_pairs["llama"][1]),
    ]
    assert {i.mode for i in built} == set(MODES)
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
    cases = [
        (iv.patch_mean(base, selection, target), lambda m, t: torch.full_like(m, 0) + t),
        (iv.add_shift(base, selection, target, alpha=0.5), lambda m, t: m - 0.5 * t),
        (iv.scale(base, selection, 0.25), lambda m, t: 0.25 * m),
        (iv.set_constant(base, selection, 2.0), lambda m, t: torch.full_like(m, 2.0)),
        (iv.mean_ablate(base, selection, target), lambda m, t: torch.full_like(m, 0) + t),
    ]
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


@pytest.mark.parametrize("kind", KINDS)
def test_newest_position_patching_in_the_kv_cache_loop_reaches_every_generated_position(loaded_pairs, kind):
    """In cached generation every single-token step is the newest position and the KV cache keeps what patched
    positions computed, so step k sees the last prompt token and every generated position patched: it equals an
    uncached pass patching exactly those positions (a hand-written hook). This is what the authors' `generate` did.
    An uncached pass patching only its own last position agrees on the first step and differs from step 2 on,
    where the positions generated before are no longer patched."""
    base, _ = loaded_pairs[kind]
    ids, _ = encode_prompts(base.tokenizer, TEXTS[:1], 32, "cpu")
    n_prompt = ids.shape[1]
    selection = some_neurons(base, per_layer=20)
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    target = np.random.default_rng(2).normal(size=(n_layers, d_mlp)) * 5
    steps = 5
    with iv.patch_mean(base, selection, target, positions="newest").hooks(), torch.no_grad():
        cached, tokens, cache, step_ids = [], [], None, ids
        for _ in range(steps):
            out = base.model(input_ids=step_ids, cache=cache, use_cache=True)
            cache = out.cache
            cached.append(out.logits[0, -1])
            step_ids = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(step_ids)
        sequences = [torch.cat([ids, *tokens[:k]], dim=1) for k in range(steps)]
        only_last = [base.model(input_ids=seq, use_cache=False).logits[0, -1] for seq in sequences]

    def patch_from_last_prompt_token(layer, indices):
        values = torch.as_tensor(target[layer, indices], dtype=torch.float32)

        def hook(module, args):
            m = args[0].clone()
            m[:, n_prompt - 1 :, indices] = values
            return (m,)

        return hook

    hooks = [
        (out_projection(base, layer), patch_from_last_prompt_token(layer, torch.as_tensor(indices)))
        for layer, indices in selection.by_layer().items()
    ]
    with forward_hooks(hooks, pre=True), torch.no_grad():
        from_last_prompt_token = [base.model(input_ids=seq, use_cache=False).logits[0, -1] for seq in sequences]
    for step in range(steps):
        torch.testing.assert_close(cached[step], from_last_prompt_token[step], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(only_last[0], cached[0], rtol=1e-4, atol=1e-4)
    for step in range(1, steps):
        gap = (only_last[step] - cached[step]).abs().max()
        assert gap > 100 * (from_last_prompt_token[step] - cached[step]).abs().max() and gap > 1e-5, step


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
    classes = {
        "TP": (cos > 0) & (act > 0),
        "TN": (cos > 0) & (act <= 0),
        "AP": (cos <= 0) & (act > 0),
        "AN": (cos <= 0) & (act <= 0),
    }
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


def test_tuning_free_clamps_known_neurons_to_one_minus_and_one_plus_alpha(loaded_pairs):
    """A hand-built case with a known answer: flat neuron k is in sign class k mod 4 (TP, TN, AP, AN) with |cos|
    growing with k, so β = 0.5 takes the upper half of the neurons (k ≥ N/2) from TP and AN and the lower half from
    TN and AP; those are clamped to (1 − α)ā and (1 + α)ā, and nothing else changes."""
    base, _ = loaded_pairs["llama"]
    n_layers, d_mlp = base.arch.n_layers(base.model), base.arch.d_mlp(base.model)
    n = n_layers * d_mlp
    k = np.arange(n)
    kind = k % 4  # 0 TP, 1 TN, 2 AP, 3 AN
    cos = np.where(kind < 2, 1.0, -1.0) * (k + 1) / n
    act = np.where(kind % 2 == 0, 1.0, -1.0) * (1 + k / n)
    upper = k >= n // 2
    factor = np.ones(n)
    factor[((kind == 0) | (kind == 3)) & upper] = 0.9
    factor[((kind == 1) | (kind == 2)) & ~upper] = 1.1
    edit = iv.tuning_free(base, act.reshape(n_layers, d_mlp), cos.reshape(n_layers, d_mlp), alpha=0.1, beta=0.5)
    assert edit.n_neurons == (factor != 1).sum() == n // 2
    kwargs = inputs(base)
    plain, _ = iv.record_activations(base, **kwargs)
    with edit.hooks():
        seen, _ = iv.record_activations(base, **kwargs)
    factor, act = factor.reshape(n_layers, d_mlp), act.reshape(n_layers, d_mlp)
    for layer in range(n_layers):
        clamped = np.flatnonzero(factor[layer] != 1)
        want = torch.as_tensor(factor[layer, clamped] * act[layer, clamped], dtype=torch.float32)
        torch.testing.assert_close(seen[layer][..., clamped], want.expand_as(seen[layer][..., clamped]))
    free = np.flatnonzero(factor[0] == 1)  # the first layer sees no earlier edit: its other neurons are untouched
    assert torch.equal(seen[0][..., free], plain[0][..., free])


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
                logits = base.model(
                    input_ids=sequence, attention_mask=full_mask, position_ids=positions, use_cache=False
                ).logits[:, -1]
                token = logits.argmax(-1)
                uncached.append(token)
                sequence = torch.cat([sequence, token[:, None]], dim=1)
                full_mask = torch.cat([full_mask, torch.ones_like(token[:, None])], dim=1)
    assert torch.equal(cached, torch.stack(uncached, dim=1))
    assert iv.hook_count(base) == iv.hook_count(tuned) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions", ["all", "newest"])
def test_an_intervention_on_one_batch_row_is_that_row_alone_patched(loaded_pairs, kind, positions):
    """`rows` (the lab's base and patched runs as one batch): the chosen row equals the intervention applied to a
    batch of that row alone, and the other row equals the model without it, for neuron edits, a live donor and the
    residual subtraction."""
    base, tuned = loaded_pairs[kind]
    ids, mask = encode_prompts(base.tokenizer, TEXTS[:1] * 2, 32, "cpu")
    single = {"input_ids": ids[:1], "attention_mask": mask[:1], "use_cache": False}
    both = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    selection = some_neurons(base, per_layer=20)
    probe = np.random.default_rng(1).normal(size=base.d_model)
    for intervention in (
        iv.scale(base, selection, 0.3, positions),
        iv.zero_ablate(base, selection, positions),
        iv.patch_live(base, selection, tuned, positions),
        iv.subtract_direction(base, probe, 2.0, positions),
    ):
        with torch.no_grad():
            plain = base.model(**single).logits
            with intervention.hooks():
                patched = base.model(**single).logits
            with dataclasses.replace(intervention, rows=slice(1, 2)).hooks():
                batch = base.model(**both).logits
        assert not torch.allclose(patched, plain, atol=1e-4), intervention.mode
        torch.testing.assert_close(batch[1], patched[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batch[0], plain[0], rtol=1e-5, atol=1e-6)
    assert iv.hook_count(base) == iv.hook_count(tuned) == 0
