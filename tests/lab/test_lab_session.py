"""The lab's numbers against other code: the cache's stored per-prompt activations, the MLP writes its lens measured,
Hugging Face's own hidden states, and the base model itself under an intervention that changes nothing."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from neuron_explorer.engine.lab.protocol import ExamplesRequest, RunRequest
from neuron_explorer.engine.lab.session import LabSession
from neuron_explorer.engine.neurons.identity_check import read_positions
from neuron_explorer.errors import UserError
from neuron_explorer.spec.intervention import Intervention
from neuron_explorer.spec.settings import RecordingSettings

PROTOCOLS = ["generated", "predicting", "prompt", "all"]


@pytest.fixture(scope="module")
def caches(pairs, compute_cache):
    """A real cache of the tiny Llama pair per position protocol, and one of the GPT-2 pair."""
    out = {
        ("llama", positions): compute_cache(
            *pairs["llama"], f"lab-llama-{positions}.h5", recording=RecordingSettings(new_tokens=5, positions=positions)
        )
        for positions in PROTOCOLS
    }
    out[("gpt2", "generated")] = compute_cache(*pairs["gpt2"], "lab-gpt2.h5")
    return out


@pytest.fixture(scope="module")
def sessions(caches):
    opened = {key: LabSession(path, device="cpu", dtype="float32") for key, path in caches.items()}
    yield opened
    for session in opened.values():
        session.close()


def stored_prompt_means(path, index: int) -> dict[str, np.ndarray]:
    """The cache's per-prompt activations of one prompt, read with h5py (not through the package's reader)."""
    with h5py.File(path, "r", locking=False) as handle:
        return {model: handle[f"prompt_acts/{model}"][index].astype(np.float64) for model in ("pre", "dpo")}


def bias_projections(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as handle:
        return {model: handle[f"layers/bias_proj_{model}"][:] for model in ("pre", "dpo")}


@pytest.mark.parametrize(
    "key", [("llama", p) for p in PROTOCOLS] + [("gpt2", "generated")], ids=lambda key: "-".join(key)
)
def test_lab_activations_of_a_cache_prompt_equal_its_stored_row(key, caches, sessions):
    session = sessions[key]
    texts = session.reader.prompt_texts()
    for index in range(len(texts)):
        result = session.answer(RunRequest(index, texts[index]))
        stored = stored_prompt_means(caches[key], index)
        for run, model in (("base", "pre"), ("dpo", "dpo")):
            lab = result.runs[run].act_mean
            scale = np.abs(stored[model]).max()
            # float16 storage: a relative error of 2^-11, and the cache's batched pass vs this single prompt
            np.testing.assert_allclose(
                lab, stored[model], rtol=2e-3, atol=2e-3 * scale, err_msg=f"{key} prompt {index} {run}"
            )


@pytest.mark.parametrize(
    "key", [("llama", p) for p in PROTOCOLS] + [("gpt2", "generated")], ids=lambda key: "-".join(key)
)
def test_a_neurons_per_token_activations_average_to_the_recorders_and_the_caches_mean(key, caches, sessions):
    """The examples' per-token pass (unpadded, one prompt at a time) against the recorder (batched, left-padded) and
    the cache's float16 rows; the read positions are those of the protocol."""
    session = sessions[key]
    n_prompts = len(session.reader.prompt_texts())
    layer, neuron = session.reader.info.n_layers - 1, 3
    prompts = tuple(range(0, n_prompts, 2))
    result = session.neuron_examples(ExamplesRequest(1, layer, neuron, prompts)).to_dict()
    assert [example["prompt"] for example in result["examples"]] == list(prompts)
    for example in result["examples"]:
        stored = stored_prompt_means(caches[key], example["prompt"])
        for run, model in (("base", "pre"), ("dpo", "dpo")):
            row = example[run]
            length, n_tokens = row["prompt_length"], len(row["tokens"])
            assert len(row["acts"]) == len(row["read"]) == n_tokens
            expected = read_positions(key[1], length, n_tokens - length)
            assert [i for i, read in enumerate(row["read"]) if read] == list(expected)
            np.testing.assert_allclose(row["mean"], row["recorded"], rtol=1e-5, atol=1e-6)
            scale = np.abs(stored[model]).max()
            assert row["stored"] == pytest.approx(stored[model][layer, neuron], abs=1e-7)
            np.testing.assert_allclose(row["mean"], row["stored"], rtol=2e-3, atol=2e-3 * scale)
    stored_tokens = session.reader.top_tokens(layer, neuron)  # what compute's lens wrote for this neuron
    for run, model in (("base", "pre"), ("dpo", "dpo")):
        for direction in ("top", "bottom"):
            rows = stored_tokens.filter((stored_tokens["model"] == model) & (stored_tokens["direction"] == direction))
            assert result["tokens"][run][f"{direction}_tokens"] == rows.sort("rank")["token"].to_list()
            np.testing.assert_allclose(
                result["tokens"][run][f"{direction}_scores"], rows.sort("rank")["score"], rtol=1e-5
            )
    with pytest.raises(UserError, match="no prompt"):
        session.neuron_examples(ExamplesRequest(2, layer, neuron, (n_prompts,)))


@pytest.mark.parametrize(
    "key", [("llama", p) for p in PROTOCOLS] + [("gpt2", "generated")], ids=lambda key: "-".join(key)
)
def test_sum_of_the_prompts_contributions_is_the_mlp_write_its_lens_measured(key, caches, sessions):
    """Σ_i P_i + b·ŵ (from the recorder's means and the cache's p) equals the mean of the MLP writes · ŵ that the lens
    read at the protocol's positions: two different hooks, one identity (METHOD §2)."""
    session = sessions[key]
    bias = bias_projections(caches[key])
    prompt = session.reader.prompt_texts()[1]
    result = session.answer(RunRequest(1, prompt))
    n_prompt = len(result.prompt_tokens)
    for run, model in (("base", "pre"), ("dpo", "dpo")):
        lens = result.runs[run].lens_mlp
        columns = list(read_positions(key[1], n_prompt, session.protocol.new_tokens))
        measured = lens[:, columns].mean(axis=1)
        summed = result.metrics[f"tox_{model}"].astype(np.float64).sum(axis=1) + bias[model]
        np.testing.assert_allclose(summed, measured, rtol=1e-4, atol=1e-5 * np.abs(lens).max())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_residual_lens_equals_hugging_faces_hidden_states(kind, sessions):
    """The lens (read by hooks during cached generation) against one uncached pass over prompt + continuation read
    from `output_hidden_states` (the last entry is after the final norm, so the last block is left out)."""
    session = sessions[(kind, "generated")]
    result = session.answer(RunRequest(1, "You are a stupid"))
    for run, loaded in (("base", session.loaded), ("dpo", session.tuned())):
        ids = loaded.tokenizer("You are a stupid", return_tensors="pt")["input_ids"]
        sequence = torch.cat([ids, torch.tensor([result.runs[run].continuation_ids])], dim=1)
        with torch.no_grad():
            hidden = loaded.model(input_ids=sequence, output_hidden_states=True).hidden_states
        unit = torch.tensor(session.unit_probe, dtype=torch.float32)
        expected = np.stack([(hidden[layer + 1][0] @ unit).double().numpy() for layer in range(len(hidden) - 2)])
        lens = result.runs[run].lens_residual[:-1]
        assert lens.shape == expected.shape
        np.testing.assert_allclose(lens, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("mode,params", [("scale", {"factor": 1.0}), ("shift", {"alpha": 0.0})])
def test_an_intervention_that_patches_nothing_leaves_the_base_run_exactly(mode, params, sessions):
    session = sessions[("llama", "generated")]
    result = session.answer(RunRequest(1, "What the hell", Intervention(mode, ("layer:1", "group:TP↓"), params=params)))
    base, patched = result.runs["base"], result.runs["patched"]
    assert result.intervention["neurons"] > 0
    assert patched.continuation_ids == base.continuation_ids
    assert patched.continuation == base.continuation
    np.testing.assert_array_equal(patched.act_mean, base.act_mean)
    np.testing.assert_array_equal(patched.lens_residual, base.lens_residual)


def test_a_real_intervention_acts_on_the_patched_run_only(sessions):
    """Zero-ablating layer 1 zeroes its ā in the patched run (the recorder reads what the hooks wrote), and changes
    nothing below it; base and DPO are as without an intervention (the patched row leaves the base row alone)."""
    session = sessions[("llama", "generated")]
    plain = session.answer(RunRequest(1, "I hate you"))
    result = session.answer(RunRequest(2, "I hate you", Intervention("zero-ablate", ("layer:1",))))
    patched = result.runs["patched"]
    assert np.all(patched.act_mean[1] == 0) and np.any(result.runs["base"].act_mean[1] != 0)
    np.testing.assert_array_equal(
        patched.lens_residual[0, : len(result.prompt_tokens)],
        result.runs["base"].lens_residual[0, : len(result.prompt_tokens)],
    )
    np.testing.assert_array_equal(result.runs["dpo"].act_mean, plain.runs["dpo"].act_mean)
    # the base run now shares a batch with the patched run: the same numbers, but for the rounding of other shapes
    np.testing.assert_allclose(result.runs["base"].act_mean, plain.runs["base"].act_mean, rtol=1e-5, atol=1e-7)
    assert result.runs["base"].continuation_ids == plain.runs["base"].continuation_ids
    table = result.to_dict()["neurons"]
    in_layer_1 = [i for i, layer in enumerate(table["layer"]) if layer == 1]
    assert in_layer_1 and all(table["act_patched"][i] == 0 for i in in_layer_1)


def test_the_labs_default_subtraction_is_fitted_on_the_prompt_and_says_in_sample(sessions):
    """The lab has only the prompt to measure DPO's change of the probe projection on: its α is that change (the last
    block's lens at the generated tokens), labelled in sample; a given α is labelled given."""
    session = sessions[("llama", "generated")]
    result = session.answer(RunRequest(3, "You pathetic loser", Intervention("subtract")))
    n_prompt = len(result.prompt_tokens)
    change = np.mean(result.runs["base"].lens_residual[-1, n_prompt:]) - np.mean(
        result.runs["dpo"].lens_residual[-1, n_prompt:]
    )
    assert result.intervention["params"]["alpha"] == pytest.approx(change, rel=1e-6)
    assert "in sample" in result.intervention["alpha_fitted_on"]
    given = session.answer(RunRequest(4, "You pathetic loser", Intervention("subtract", params={"alpha": 0.5})))
    assert given.intervention["alpha_fitted_on"] == "given (--alpha)"


def test_a_lab_on_other_tuned_weights_than_the_caches_warns_in_one_line(caches, pairs, edited_copy, tmp_path):
    base, _ = pairs["llama"]
    other = edited_copy(base, tmp_path / "other-tuned", noise=0.05)
    events = []
    with LabSession(
        caches[("llama", "generated")], tuned=str(other), device="cpu", dtype="float32", report=events.append
    ):
        pass
    warnings = [e.text for e in events if getattr(e, "level", "") == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the tuned model's weights")
    events.clear()
    with LabSession(caches[("llama", "generated")], device="cpu", dtype="float32", report=events.append):
        pass
    assert not [e for e in events if getattr(e, "level", "") == "warning"]


def test_top_neurons_are_the_largest_by_delta_and_by_shift(sessions):
    session = sessions[("llama", "generated")]
    result = session.answer(RunRequest(1, "Shut up and get out", top=5))
    table = result.to_dict()["neurons"]
    contribution = result.metrics["contribution"].astype(np.float64)
    shift = np.abs(result.metrics["act_shift"].astype(np.float64))
    chosen = set(zip(table["layer"], table["neuron"]))
    d_mlp = contribution.shape[1]
    for array in (contribution, shift):
        for flat in np.argsort(-array.ravel())[:5]:
            assert (flat // d_mlp, flat % d_mlp) in chosen
    assert len(chosen) <= 10
    assert table["contribution"] == sorted(table["contribution"], reverse=True)
    assert result.to_dict()["totals"]["net"] == pytest.approx(contribution.sum())


@pytest.mark.parametrize(
    "request_,message",
    [  # the intervention's own checks: tests/test_spec_intervention.py
        (RunRequest(1, "x", Intervention("scale", ("group:nope",))), "group"),
        (RunRequest(1, "x", Intervention("scale", ("layer:99",))), "out of range"),
    ],
)
def test_a_bad_request_is_one_line_before_any_model_runs(request_, message, sessions):
    with pytest.raises(UserError, match=message) as caught:
        sessions[("llama", "generated")].answer(request_)
    assert "\n" not in str(caught.value)
