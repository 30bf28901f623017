"""`compute` end to end on tiny models: every statistic against plain Hugging Face code, localized Δ, the HDF5 round
trip, and every bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neuron_explorer.cache.atomic import temporary_path
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
from neuron_explorer.engine.neurons.recording import ActivationRecorder
from neuron_explorer.spec.settings import RecordingSettings

PROMPTS = "You are a stupid\nShe walked to the market in the morning and\nWhat the hell\nThe river runs\nI hate you\n"
CHANGED = [(2, 3), (2, 17), (2, 40)]  # (layer, neuron) of the last layer, whose weights the tuned copy changes


def change_last_layer_neurons(model) -> None:
    """New output weights and damped input weights for the CHANGED neurons of the tiny Llama."""
    generator = torch.Generator().manual_seed(7)
    for layer, neuron in CHANGED:
        mlp = model.model.layers[layer].mlp
        mlp.down_proj.weight[:, neuron] += torch.randn(mlp.down_proj.weight.shape[0], generator=generator) * 0.5
        mlp.up_proj.weight[neuron] *= 0.3


@pytest.fixture(scope="module")
def workspace(tiny_models, edited_copy, tmp_path_factory):
    root = tmp_path_factory.mktemp("compute")
    (root / "prompts.txt").write_text(PROMPTS)
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")
    edited_copy(tiny_models["llama"], root / "llama-noisy", noise=0.02)
    edited_copy(tiny_models["llama"], root / "llama-local", edit=change_last_layer_neurons)
    return root


def settings(root: Path, base: Path, tuned: Path, name: str, **extra) -> ComputeSettings:
    return ComputeSettings(
        base=str(base),
        tuned=str(tuned),
        probe=str(root / "probe.pt"),
        prompts=str(root / "prompts.txt"),
        output=root / name,
        device="cpu",
        dtype="float32",
        cluster_top_k=40,
        n_clusters=4,
        **{"recording": RecordingSettings(new_tokens=5), **extra},
    )


def plain_statistics(folder: Path, prompts: list[str], w_hat: np.ndarray, new_tokens: int) -> dict[str, np.ndarray]:
    """ā, P and the MLP's mean write along ŵ of a tiny Llama, by plain Hugging Face code: a greedy loop without a
    cache (end of text suppressed), then one full pass with a hook on each MLP that recomputes the activations
    silu(gate x)·(up x) from the MLP's input and keeps its output; means over the generated tokens' positions."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    layers = model.model.layers
    act_sums = np.zeros((len(layers), layers[0].mlp.down_proj.in_features))
    write_sums = np.zeros(len(layers))
    captured = {}
    handles = [
        layer.mlp.register_forward_hook(
            lambda module, inputs, output, i=i: captured.__setitem__(
                i, (torch.nn.functional.silu(module.gate_proj(inputs[0])) * module.up_proj(inputs[0]), output)
            )
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt").input_ids
                length = ids.shape[1]
                for _ in range(new_tokens):
                    logits = model(input_ids=ids).logits[0, -1]
                    logits[tokenizer.eos_token_id] = float("-inf")
                    ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
                model(input_ids=ids)
                for i, (acts, output) in captured.items():
                    act_sums[i] += acts[0, length:].double().sum(0).numpy()
                    write_sums[i] += float((output[0, length:].double().numpy() @ w_hat).sum())
    finally:
        for handle in handles:
            handle.remove()
    n = len(prompts) * new_tokens
    p = np.stack([layer.mlp.down_proj.weight.detach().double().numpy().T @ w_hat for layer in layers])
    return {"act": act_sums / n, "tox": act_sums / n * p, "write": write_sums / n}


def test_statistics_match_plain_hugging_face_code(workspace, tiny_models):
    result = run_compute(settings(workspace, tiny_models["llama"], workspace / "llama-noisy", "rt.h5"))
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tuned = AutoModelForCausalLM.from_pretrained(workspace / "llama-noisy")
    w = torch.load(workspace / "probe.pt").numpy().astype(np.float64)
    w_hat = w / np.linalg.norm(w)
    with CacheReader(result.path) as reader:
        prompts = reader.table("prompts")["text"].to_list()  # those recorded (others may be kept for patch runs)
        plain = {
            "pre": plain_statistics(tiny_models["llama"], prompts, w_hat, 5),
            "dpo": plain_statistics(workspace / "llama-noisy", prompts, w_hat, 5),
        }
        frame = reader.neurons()
        assert frame.height == 3 * 64
        for layer in range(3):
            rows = frame.filter(frame["layer"] == layer).sort("neuron")
            for name, model in (("pre", base), ("dpo", tuned)):
                values = model.model.layers[layer].mlp.down_proj.weight.detach().double().numpy().T  # (d_mlp, d)
                expected_cos = values @ w / (np.linalg.norm(values, axis=1) * np.linalg.norm(w))
                np.testing.assert_allclose(rows[f"cos_{name}"].to_numpy(), expected_cos, rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(rows[f"p_{name}"].to_numpy(), values @ w_hat, rtol=1e-4, atol=1e-6)

        def column(name: str) -> np.ndarray:
            return frame.sort("layer", "neuron")[name].to_numpy().reshape(3, 64)

        def close(actual: np.ndarray, expected: np.ndarray) -> None:
            np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())

        for name in ("pre", "dpo"):
            close(column(f"act_{name}"), plain[name]["act"])
            close(column(f"tox_{name}"), plain[name]["tox"])
        close(column("act_shift"), plain["pre"]["act"] - plain["dpo"]["act"])
        close(column("contribution"), plain["pre"]["tox"] - plain["dpo"]["tox"])
        layers = reader.layers()
        close(layers["sum_contribution"].to_numpy(), (plain["pre"]["tox"] - plain["dpo"]["tox"]).sum(axis=1))
        for name in ("pre", "dpo"):  # the identity check measured every prompt (fewer than its default sample)
            close(layers[f"mlp_proj_{name}"].to_numpy(), plain[name]["write"])
            assert np.abs(layers[f"residual_{name}"]).max() < 1e-4 * np.abs(plain[name]["write"]).max()
        close(layers["measured_change"].to_numpy(), plain["pre"]["write"] - plain["dpo"]["write"])
        close(layers["sum_contribution_sample"].to_numpy(), layers["sum_contribution"].to_numpy())  # sample = all
        attrs = reader.attrs("layers")
        assert attrs["identity_sample_size"] == len(prompts) and attrs["identity_prompts"] == list(range(len(prompts)))
        assert attrs["n_positions_pre"] == attrs["identity_positions_pre"] == len(prompts) * 5
        root = reader.attrs()
        assert root["positions"] == "generated" and "Yang et al. v3" in root["protocol"]
        assert reader.group_summary().filter(reader.group_summary()["reducing"])["share_v3"].sum() == pytest.approx(1.0)
        assert reader.summary()["n_neurons"] == 192
        assert reader.info.provenance["probe"]["sha256"]
        assert reader.info.provenance["settings"]["new_tokens"] == 5
        assert 0 < len(prompts) <= 5 and set(prompts) <= set(PROMPTS.split("\n"))
        tokens = reader.top_tokens(2, 5)
        assert tokens.height == 40 and tokens["token"].str.len_chars().min() >= 0
        assert reader.clusters()["size"].sum() == 40
        assert reader.prompt_activations(1, 2).height == len(prompts)


def test_only_changed_neurons_show_a_contribution(workspace, tiny_models):
    """Changing a few last-layer neurons changes nothing upstream, so on shared tokens Δ ≠ 0 exactly there."""
    for options in ({"positions": "prompt"}, {"shared_continuation": True}):
        options = {"recording": RecordingSettings(new_tokens=5, **options)}
        result = run_compute(
            settings(workspace, tiny_models["llama"], workspace / "llama-local", "local.h5", **options)
        )
        with CacheReader(result.path) as reader:
            frame = reader.neurons()
        moved = frame.filter(frame["contribution"].abs() > 1e-7)
        assert sorted(zip(moved["layer"].to_list(), moved["neuron"].to_list())) == CHANGED
        shifted = frame.filter(frame["act_shift"].abs() > 1e-7)
        assert set(zip(shifted["layer"].to_list(), shifted["neuron"].to_list())) <= set(CHANGED)


def turn_last_layer_value_vectors(model) -> None:
    """New output weights (value vectors) for every neuron of the tiny Llama's last layer, nothing else."""
    down = model.model.layers[-1].mlp.down_proj.weight
    down += torch.randn(down.shape, generator=torch.Generator().manual_seed(11)) * 0.3


def test_a_pair_that_differs_only_in_value_vectors_moves_only_the_writing_term(workspace, tiny_models, edited_copy):
    """The last layer's output weights alone changed, recorded on the base model's tokens: no activation moves, so
    the firing term is 0 everywhere and the writing term is Δ, which is ā·(p_pre − p_dpo) from the weights read
    here with plain torch."""
    tuned = edited_copy(tiny_models["llama"], workspace / "llama-values", edit=turn_last_layer_value_vectors)
    result = run_compute(
        settings(
            workspace,
            tiny_models["llama"],
            tuned,
            "values.h5",
            recording=RecordingSettings(new_tokens=5, shared_continuation=True),
        )
    )
    w = torch.load(workspace / "probe.pt").double()
    p = {
        name: (
            AutoModelForCausalLM.from_pretrained(folder).model.layers[-1].mlp.down_proj.weight.detach().double().T
            @ (w / w.norm())
        ).numpy()
        for name, folder in (("pre", tiny_models["llama"]), ("dpo", tuned))
    }
    with CacheReader(result.path) as reader:
        frame = reader.neurons().sort("layer", "neuron")
        layers = reader.layers()
    firing, writing, delta = (
        frame[name].to_numpy().reshape(3, 64) for name in ("activation_term", "weight_term", "contribution")
    )
    act = frame["act_pre"].to_numpy().reshape(3, 64)
    # the tuned model reads the tokens in one teacher-forced pass, the base made them step by step: the same
    # activations up to float32 rounding (~1e-11 here), not bit for bit
    scale = np.abs(delta).max()
    assert np.abs(firing).max() < 1e-7 * scale and np.abs(delta[:2]).max() < 1e-7 * scale
    assert np.abs(delta[2]).min() > 1e-4 * scale
    np.testing.assert_allclose(writing, delta, rtol=1e-6, atol=1e-7 * scale)
    np.testing.assert_allclose(writing[2], act[2] * (p["pre"] - p["dpo"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layers["sum_weight_term"], layers["sum_contribution"], rtol=1e-5, atol=1e-6 * scale)
    assert np.abs(layers["sum_activation_term"]).max() < 1e-6 * scale


def test_compute_stores_the_detector_labels_and_auroc(workspace, tiny_models):
    """The base continuations' scores by the profanity scorer, read back, label the prompts; the stored AUROC is
    scikit-learn's on the stored per-prompt activations, or NaN, said in the attributes, when one class is empty
    (a tiny random model rarely says anything profane)."""
    from sklearn.metrics import roc_auc_score

    from neuron_explorer.engine.measure.scoring import get_scorer

    result = run_compute(settings(workspace, tiny_models["llama"], workspace / "llama-noisy", "detect.h5"))
    with CacheReader(result.path) as reader:
        prompts = reader.table("prompts")
        scores = get_scorer("profanity").score(prompts["continuation_pre"].to_list())
        np.testing.assert_allclose(prompts["toxicity_pre"].to_numpy(), scores)
        toxic = scores > 0.5
        attrs = reader.attrs("neurons/auroc")
        auroc = reader.neuron_array("auroc")
        acts = reader.file["prompt_acts/pre"][:]
    assert (attrs["scorer"], attrs["n_toxic"], attrs["n_clean"]) == ("profanity", toxic.sum(), (~toxic).sum())
    if 0 < toxic.sum() < toxic.size:
        assert auroc[1, 5] == pytest.approx(roc_auc_score(toxic, acts[:, 1, 5]))
    else:
        assert np.isnan(auroc).all() and "one class only" in attrs["labels"]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def base_args(workspace, tiny_models, output) -> list[str]:
    return [
        "compute",
        "--base",
        str(tiny_models["llama"]),
        "--tuned",
        str(workspace / "llama-noisy"),
        "--probe",
        str(workspace / "probe.pt"),
        "--prompts",
        str(workspace / "prompts.txt"),
        "--device",
        "cpu",
        "--new-tokens",
        "3",
        "--identity-check",
        "2",
        "-o",
        str(output),
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (("--probe", "missing.pt"), "does not exist"),
        (("--probe", "WIDE"), "has width 48"),
        (("--prompts", "BADJSON"), "not valid JSON"),
        (("--prompts", "EMPTY"), "holds no prompts"),
        (("--prompts", "nowhere.jsonl"), "does not exist"),
        (("--tuned", "GPT2"), "differ"),
        (("--base", "UNKNOWN"), "not supported"),
        (("--tuned", "./no/such/folder"), "does not exist"),
        (("-o", "NODIR"), "does not exist"),
        (("--identity-check", "some"), "--identity-check must be a number"),
    ],
)
def test_bad_inputs_give_one_line_errors_and_leave_no_file(workspace, tiny_models, tmp_path, capsys, change, message):
    output = tmp_path / "out.h5"
    replacements = {
        "WIDE": lambda: torch.save(torch.randn(48), tmp_path / "wide.pt") or tmp_path / "wide.pt",
        "BADJSON": lambda: (
            (tmp_path / "bad.jsonl").write_text('{"prompt": {"text": "ok"}}\n{not json\n') and tmp_path / "bad.jsonl"
        ),
        "EMPTY": lambda: (tmp_path / "empty.txt").write_text("\n\n") is not None and tmp_path / "empty.txt",
        "GPT2": lambda: tiny_models["gpt2"],
        "UNKNOWN": lambda: unknown_architecture(tiny_models["llama"], tmp_path / "unknown"),
        "NODIR": lambda: tmp_path / "no" / "dir" / "out.h5",
    }
    flag, value = change
    value = str(replacements[value]()) if value in replacements else value
    args = base_args(workspace, tiny_models, output)
    args[args.index(flag) + 1] = value
    code, err = run_cli(args, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.tmp"))


def unknown_architecture(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    config = (target / "config.json").read_text().replace('"model_type": "llama"', '"model_type": "bloom"')
    (target / "config.json").write_text(config)
    return target


def test_compute_prints_the_identity_residuals(workspace, tiny_models, tmp_path, capsys):
    args = base_args(workspace, tiny_models, tmp_path / "cli.h5")
    args[args.index("--identity-check") + 1] = "all"
    code, err = run_cli(args, capsys)
    assert code == 0
    with CacheReader(tmp_path / "cli.h5") as reader:
        n_prompts = reader.info.n_prompts
        assert reader.attrs("layers")["identity_sample_size"] == n_prompts
    assert f"identity check on {n_prompts} prompts" in err and "  base  |Σ P + b·ŵ − measured write|" in err
    assert f"Σ Δ on those {n_prompts} prompts" in err and err.count(": pass") == 2 and "FAIL" not in err


def lose_a_batch(monkeypatch, how: str) -> None:
    """Make the recorder's running totals miss its second batch ("dropped") or add its first twice ("doubled"),
    leaving every per-prompt mean right: the bookkeeping bugs that the published ā, P and Δ would inherit."""
    end_batch = ActivationRecorder.end_batch

    def faulty(self):
        before = [total.clone() for total in self.act_total], self.n_positions
        batches = getattr(self, "batches_seen", 0)
        self.batches_seen = batches + 1
        result = end_batch(self)
        if how == "dropped" and batches == 1:
            for total, saved in zip(self.act_total, before[0]):
                total.copy_(saved)
            self.n_positions = before[1]
        if how == "doubled" and batches == 0:
            for total, saved in zip(self.act_total, before[0]):
                total += total - saved
            self.n_positions += self.n_positions - before[1]
        return result

    monkeypatch.setattr(ActivationRecorder, "end_batch", faulty)


@pytest.mark.parametrize("how", ["dropped", "doubled"])
def test_a_batch_lost_from_the_totals_fails_the_check(workspace, tiny_models, tmp_path, monkeypatch, capsys, how):
    args = base_args(workspace, tiny_models, tmp_path / "ok.h5") + ["--batch-size", "1"]
    code, err = run_cli(args, capsys)
    assert code == 0 and ": FAIL" not in err, err
    lose_a_batch(monkeypatch, how)
    args[args.index("-o") + 1] = str(tmp_path / "lost.h5")
    code, err = run_cli(args, capsys)
    assert code == 1 and "published ā against the per-prompt means of every prompt" in err, err
    pooling = next(line for line in err.splitlines() if "per-prompt means of every prompt" in line)
    assert pooling.endswith(": FAIL") and "do not publish" in err.splitlines()[-1]
    with CacheReader(tmp_path / "lost.h5") as reader:
        attrs = reader.attrs("layers")
        assert not attrs["pooling_passed"] and attrs["pooling_relative"] > 1e-3
        assert attrs["identity_passed"]  # the sample's means are right: the check of the sample alone saw nothing
        assert np.abs(reader.layers()["pooling_residual_pre"].to_numpy()).max() > 0


def test_sigma_delta_and_the_measured_change_cover_the_same_prompts(workspace, tiny_models):
    """On the identity check's 2 prompts, Σ Δ (from their recorded means) and the measured change equal plain Hugging
    Face code run on those 2 prompts alone; Σ Δ over every prompt is another number."""
    result = run_compute(
        settings(workspace, tiny_models["llama"], workspace / "llama-noisy", "sample.h5", identity_check=2)
    )
    w = torch.load(workspace / "probe.pt").numpy().astype(np.float64)
    w_hat = w / np.linalg.norm(w)
    with CacheReader(result.path) as reader:
        texts = reader.table("prompts")["text"].to_list()
        sample = reader.attrs("layers")["identity_prompts"]
        layers = reader.layers()
    assert len(sample) == 2 < len(texts)
    chosen = [texts[i] for i in sample]
    plain = {
        "pre": plain_statistics(tiny_models["llama"], chosen, w_hat, 5),
        "dpo": plain_statistics(workspace / "llama-noisy", chosen, w_hat, 5),
    }
    expected = (plain["pre"]["tox"] - plain["dpo"]["tox"]).sum(axis=1)
    np.testing.assert_allclose(layers["sum_contribution_sample"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        layers["measured_change"].to_numpy(), plain["pre"]["write"] - plain["dpo"]["write"], rtol=1e-4, atol=1e-6
    )
    assert np.abs(layers["change_residual"].to_numpy()).max() < 1e-4 * np.abs(expected).max()
    assert np.abs(layers["sum_contribution"].to_numpy() - expected).max() > 1e-3 * np.abs(expected).max()


def test_an_interrupted_run_leaves_nothing_that_looks_complete(workspace, tiny_models, tmp_path, monkeypatch):
    output = tmp_path / "interrupted.h5"
    from neuron_explorer.engine.neurons import compute as compute_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compute_module, "write_statistics", interrupt)
    run_settings = settings(workspace, tiny_models["llama"], workspace / "llama-noisy", "x.h5")
    run_settings.output = output
    with pytest.raises(KeyboardInterrupt):
        run_compute(run_settings)
    assert not output.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    # a stale temporary file of a dead process is cleaned up by the next run, which then completes
    temporary_path(output, 999999).write_bytes(b"half")
    run_compute(run_settings)
    assert [p.name for p in tmp_path.iterdir()] == [output.name]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"\x00garbage" * 100, "not a readable HDF5 file"),
        ("foreign", "not a neuron-explorer cache"),
        ("newer", "newer than"),
        (
            "older",
            "older neuron-explorer .* position labels and v1 shares were wrong; the identity check did not "
            "cover the published ā.*: recompute it with `neuron-explorer compute`",
        ),
        ("incomplete", "incomplete"),
    ],
)
def test_reader_refuses_bad_files(tmp_path, content, message):
    from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
    from neuron_explorer.errors import UserError

    path = tmp_path / "file.h5"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "foreign":
        with h5py.File(path, "w") as handle:
            handle["data"] = np.arange(3)
    elif content in ("newer", "older", "incomplete"):
        build_synthetic_cache(path)
        with h5py.File(path, "r+") as handle:
            if content == "incomplete":
                handle.attrs["complete"] = False
            else:
                handle.attrs["schema_version"] = 99 if content == "newer" else 1
    with pytest.raises(UserError, match=message):
        CacheReader(path)


def test_strings_with_nul_are_stored_readably(tmp_path):
    """A model may generate NUL, which HDF5 variable-length strings cannot hold: it is stored as the characters \\0."""
    from neuron_explorer.cache.writer import CacheWriter

    path = tmp_path / "nul.h5"
    with CacheWriter(path, n_layers=1, d_mlp=2, d_model=2, architecture="test", provenance={}) as writer:
        writer.write_prompts({"text": ["a prompt"], "continuation_pre": ["bad\x00byte"], "continuation_dpo": ["ok"]})
        writer.write_vocab(["\x00", "b"])
    with h5py.File(path, "r") as handle:
        assert handle["prompts/continuation_pre"].asstr()[0] == "bad\\0byte"
        assert handle["vocab"].asstr()[:].tolist() == ["\\0", "b"]
