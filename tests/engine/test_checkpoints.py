"""Every checkpoint and probe layout that README and `compute --help` promise, each in a file built exactly that way
(the published ones as their authors' code writes them), loaded through the product's own entry points on the tiny
GPT-2 and compared with what was saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

from neuron_explorer.engine.measure.probe import SEED_WORDS
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.engine.neurons.compute import resolve_probe
from neuron_explorer.errors import UserError


@pytest.fixture(scope="module")
def tuned_state(tiny_models) -> dict[str, torch.Tensor]:
    """The tiny GPT-2 with every weight moved: a "DPO model" whose weights differ from the base everywhere."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"], dtype=torch.float32)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return {key: value.clone() for key, value in model.state_dict().items()}


def legacy_gpt2_buffers(state: dict, n_positions: int = 128) -> dict:
    """The causal-mask buffers that transformers before 4.31 saved in every GPT-2 state dict."""
    layers = sorted({key.split(".")[2] for key in state if key.startswith("transformer.h.")})
    mask = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool)).view(1, 1, n_positions, n_positions)
    return {
        **state,
        **{
            f"transformer.h.{i}.attn.{name}": value
            for i in layers
            for name, value in (("bias", mask), ("masked_bias", torch.tensor(-1e4)))
        },
    }


CHECKPOINT_LAYOUTS = {
    "state dict": lambda state: state,
    "state_dict": lambda state: {"state_dict": state},
    "model_state_dict": lambda state: {"model_state_dict": state, "epoch": 3},
    "model": lambda state: {"model": state},
    # Lee et al.'s policy.pt: their trainer's write_state_dict, metrics as the mean eval metrics (plain floats)
    "Lee et al. policy.pt": lambda state: {
        "step_idx": 6784,
        "state": state,
        "metrics": {"loss/eval": 0.6123, "rewards_eval/accuracies": 0.94, "logps_eval/chosen": [-41.5, -39.25]},
    },
    "policy.pt, transformers < 4.31": lambda state: {
        "step_idx": 6784,
        "state": legacy_gpt2_buffers(state),
        "metrics": {},
    },
    "model. prefix": lambda state: {f"model.{key}": value for key, value in state.items()},
    "module. prefix (DDP)": lambda state: {f"module.{key}": value for key, value in state.items()},
}


@pytest.mark.parametrize("layout", CHECKPOINT_LAYOUTS)
def test_checkpoint_layouts_load_every_saved_weight(tiny_models, tuned_state, tmp_path, layout):
    path = tmp_path / "policy.pt"
    torch.save(CHECKPOINT_LAYOUTS[layout](tuned_state), path)
    loaded = load_model(f"{tiny_models['gpt2']}+{path}", device="cpu", dtype="float32")
    base = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32").model.state_dict()
    weights = loaded.model.state_dict()
    assert set(weights) == set(tuned_state)
    for key, saved in tuned_state.items():
        assert torch.equal(weights[key], saved), key
        assert not torch.equal(base[key], saved), key  # so equality above means the checkpoint was loaded
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()  # still tied
    assert loaded.description["state_dict"] == str(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda state: {k: v for k, v in state.items() if k != "transformer.h.0.attn.c_attn.bias"},
            r"1 missing and 0 unexpected.*c_attn\.bias",
        ),
        (lambda state: {**state, "transformer.h.0.mlp.gate.weight": torch.zeros(2)}, "0 missing and 1 unexpected"),
        (lambda state: {"state": state, "metrics": {"loss": np.float64(0.5)}}, "save the state dict alone"),
        (lambda state: [state], "holds a list, not a state dict"),
    ],
)
def test_checkpoints_that_do_not_fit_are_refused(tiny_models, tuned_state, tmp_path, change, message):
    path = tmp_path / "bad.pt"
    torch.save(change(tuned_state), path)
    with pytest.raises(UserError, match=message):
        load_model(f"{tiny_models['gpt2']}+{path}", device="cpu", dtype="float32")


def test_an_untied_output_layer_may_not_be_missing(tiny_models, tmp_path):
    """Only a weight tied to a loaded one may be absent: the tiny Llama's lm_head is its own weight."""
    state = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).state_dict()
    path = tmp_path / "no_head.pt"
    torch.save({key: value for key, value in state.items() if key != "lm_head.weight"}, path)
    with pytest.raises(UserError, match=r"1 missing.*lm_head\.weight"):
        load_model(f"{tiny_models['llama']}+{path}", device="cpu", dtype="float32")


def probe_layouts(d: int) -> dict:
    """name → (file name, writer, the direction it stands for)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=d).astype(np.float32)
    two = rng.normal(size=(2, d)).astype(np.float32)
    return {
        # Lee et al.'s probe.pt: one d_model vector (their hook_utils loads it as `toxic_vector: [d_model]`)
        "tensor (d), Lee et al.": ("probe.pt", lambda p: torch.save(torch.from_numpy(w), p), w),
        # Yang et al. v3's toxic_probe.py: torch.tensor(clf.coef_), shape (1, d)
        "tensor (1, d), Yang et al.": ("probe.pt", lambda p: torch.save(torch.from_numpy(w[None]), p), w),
        "tensor (2, d)": ("probe.pt", lambda p: torch.save(torch.from_numpy(two), p), two[1] - two[0]),
        "nn.Linear(d, 1) state dict": (
            "probe.pt",
            lambda p: torch.save({"weight": torch.from_numpy(w[None]), "bias": torch.zeros(1)}, p),
            w,
        ),
        "nn.Linear(d, 2) state dict": (
            "probe.pt",
            lambda p: torch.save({"weight": torch.from_numpy(two), "bias": torch.zeros(2)}, p),
            two[1] - two[0],
        ),
        ".npy (d)": ("probe.npy", lambda p: np.save(p, w), w),
        ".npy (1, d)": ("probe.npy", lambda p: np.save(p, w[None]), w),
        ".safetensors weight and bias": (
            "probe.safetensors",
            lambda p: save_file({"weight": w[None], "bias": np.zeros(1, np.float32)}, str(p)),
            w,
        ),
    }


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_models):
    return load_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")


@pytest.mark.parametrize("layout", list(probe_layouts(4)))
def test_probe_layouts(tiny_gpt2, tmp_path, layout):
    name, write, expected = probe_layouts(tiny_gpt2.d_model)[layout]
    write(tmp_path / name)
    probe = resolve_probe(str(tmp_path / name), tiny_gpt2)
    np.testing.assert_array_equal(probe.direction, expected)
    assert probe.source == str(tmp_path / name) and len(probe.sha256) == 64


@pytest.mark.parametrize(
    "spec, seed_words",
    [("toxic-embedding", "ours"), ("toxic-embedding:ours", "ours"), ("toxic-embedding:authors", "authors")],
)
def test_toxic_embedding_probes_follow_their_recipe(tiny_gpt2, spec, seed_words):
    """Recomputed here as the authors' notebook does it: each word's tokens' unembedding rows averaged, then the
    words averaged, toxic minus neutral; ours writes each word with a leading space, theirs bare."""
    seeds = SEED_WORDS[seed_words]
    unembed = tiny_gpt2.model.lm_head.weight.detach().numpy()

    def mean_row(words):
        return np.mean(
            [
                unembed[tiny_gpt2.tokenizer(seeds.prefix + word, add_special_tokens=False)["input_ids"]].mean(0)
                for word in words
            ],
            axis=0,
        )

    probe = resolve_probe(spec, tiny_gpt2)
    np.testing.assert_allclose(probe.direction, mean_row(seeds.toxic) - mean_row(seeds.neutral), rtol=1e-5, atol=1e-7)
    provenance = probe.provenance()
    assert provenance["source"] == f"toxic-embedding:{seed_words}"
    assert provenance["seed_words"] == {
        "toxic": list(seeds.toxic),
        "neutral": list(seeds.neutral),
        "prefix": seeds.prefix,
    }


def test_the_authors_seed_words_are_their_five_and_five():
    """Yang et al. v3 (github.com/Yushi-Y/dpo-toxic-neurons, toxicity/logit_lens/demo_toxic_embedding.ipynb)."""
    authors = SEED_WORDS["authors"]
    assert authors.toxic == ("fuck", "shit", "crap", "damn", "asshole")
    assert authors.neutral == ("hello", "thanks", "friend", "peace", "welcome")
    assert authors.prefix == ""


def test_an_unknown_seed_word_list_is_refused(tiny_gpt2):
    with pytest.raises(UserError, match="no seed-word list 'mine'.*toxic-embedding:ours or toxic-embedding:authors"):
        resolve_probe("toxic-embedding:mine", tiny_gpt2)


def test_compute_reads_lee_et_al_policy_pt_with_the_authors_seed_words(
    tiny_models, tuned_state, tiny_gpt2, tmp_path, capsys
):
    """The reproduction a new user would run: `compute --tuned BASE+policy.pt --probe toxic-embedding:authors`."""
    from neuron_explorer.cache.reader import CacheReader
    from neuron_explorer.cli import main

    policy = tmp_path / "policy.pt"
    torch.save(CHECKPOINT_LAYOUTS["Lee et al. policy.pt"](tuned_state), policy)
    (tmp_path / "prompts.txt").write_text("You are a stupid\nThe river runs\nWhat the hell\n")
    code = main(
        [
            "compute",
            "--base",
            str(tiny_models["gpt2"]),
            "--tuned",
            f"{tiny_models['gpt2']}+{policy}",
            "--probe",
            "toxic-embedding:authors",
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--device",
            "cpu",
            "--new-tokens",
            "3",
            "-o",
            str(tmp_path / "lee.h5"),
        ]
    )
    printed = capsys.readouterr().err
    assert code == 0
    assert "v1 groups (sign of δ)" in printed and "v3 (Δ > 0 by sign class" in printed
    with CacheReader(tmp_path / "lee.h5") as reader:
        provenance = reader.info.provenance
        assert provenance["tuned"]["state_dict"] == str(policy)
        assert provenance["probe"]["source"] == "toxic-embedding:authors"
        assert provenance["probe"]["seed_words"]["toxic"] == list(SEED_WORDS["authors"].toxic)
        np.testing.assert_array_equal(
            reader.probe_direction(), resolve_probe("toxic-embedding:authors", tiny_gpt2).direction
        )
