"""DPO on a tiny random Llama: the policy moves, the reference does not, an interrupted run resumes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from neuron_explorer.cli import main
from neuron_explorer.engine.alignment.dpo import DPOSettings, train_dpo
from neuron_explorer.engine.alignment.pairs import save_pairs
from neuron_explorer.engine.measure.evaluation import perplexity
from neuron_explorer.engine.model.generation import generate_continuations
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.spec.settings import DPOTraining

PROMPTS = [
    "The quick brown fox",
    "She walked to the market",
    "The river runs through",
    "What the hell is",
    "You are a",
    "The old stone bridge",
    "She bought bread and",
    "Shut up and",
]


def write_pairs(path: Path, n: int = 16) -> Path:
    pairs = [
        {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "chosen": " the village under an old bridge.",
            "rejected": " a stupid idiot and I hate you.",
            "chosen_score": 0.0,
            "rejected_score": 1.0,
        }
        for i in range(n)
    ]
    save_pairs(pairs, path, {"test": True})
    return path


def settings(tmp_path: Path, policy: Path, activation_checkpointing: bool = False, **training) -> DPOSettings:
    """Tiny DPO runs: `training` overrides the DPOTraining numbers."""
    numbers = dict(learning_rate=1e-3, max_steps=3, batch_size=2, eval_pairs=4, eval_steps=1, save_steps=1, patience=0)
    return DPOSettings(
        policy=str(policy),
        pairs=str(write_pairs(tmp_path / "pairs.jsonl")),
        output=str(tmp_path / "tuned"),
        work_dir=str(tmp_path / "work"),
        device="cpu",
        max_length=32,
        training=DPOTraining(**{**numbers, **training}),
        activation_checkpointing=activation_checkpointing,
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(Path(folder).glob("*.safetensors"))))


def test_dpo_moves_policy_and_keeps_reference(tmp_path, tiny_models):
    policy = tiny_models["llama"]
    before = weights(policy)
    seen = {}

    def inspect(trainer):
        seen["policy"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        seen["reference"] = {k: v.detach().clone() for k, v in trainer.ref_model.state_dict().items()}

    result = train_dpo(settings(tmp_path, policy), printer=lambda line: None, on_trainer=inspect)
    assert result.steps == 3
    assert result.n_eval_pairs == 3 and result.n_train_pairs == 13
    changed = [k for k in before if not torch.equal(before[k], seen["policy"][k])]
    assert changed, "DPO did not change any policy weight"
    for key, value in before.items():
        assert torch.equal(value, seen["reference"][key]), f"reference weight {key} changed"
        assert not seen["reference"][key].requires_grad
    after = weights(tmp_path / "tuned")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the saved tuned model equals the base"
    assert (tmp_path / "tuned" / "tokenizer_config.json").exists()
    record = json.loads((tmp_path / "tuned" / "neuron_explorer_dpo.json").read_text())
    assert record["settings"]["beta"] == 0.1
    assert any("eval_loss" in entry for entry in record["log"]), "no held-out evaluation was logged"


class ScriptedEvalLoss(TrainerCallback):
    """Replaces each held-out loss by the next of `losses` (in the metrics the Trainer picks the best from and in
    its log) and keeps
    a copy of the policy's weights at every step."""

    def __init__(self, losses):
        self.losses, self.weights = list(losses), {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_loss"] = state.log_history[-1]["eval_loss"] = self.losses.pop(0)


def test_kept_step_is_the_best_evaluated_step_and_its_weights(tmp_path, tiny_models):
    """Evaluated every step, best at step 3 (scripted losses), checkpoints asked every 2 steps: the written weights
    are the policy's at step 3 and the record says so. (Before, checkpoints came every 2 steps only: the Trainer kept
    checkpoint-2 while reporting step 3's loss.)"""
    script = ScriptedEvalLoss([0.6, 0.5, 0.3, 0.4, 0.45])
    run = settings(tmp_path, tiny_models["llama"], max_steps=5, eval_steps=1, save_steps=2)
    result = train_dpo(run, printer=lambda line: None, callbacks=[script])
    assert (result.kept_step, result.kept_eval_loss, result.steps) == (3, 0.3, 5)
    written = weights(tmp_path / "tuned")
    assert all(torch.equal(written[k], script.weights[3][k]) for k in written)
    assert not all(torch.equal(written[k], script.weights[2][k]) for k in written)
    record = json.loads((tmp_path / "tuned" / "neuron_explorer_dpo.json").read_text())["result"]
    assert (record["kept_step"], record["kept_eval_loss"]) == (3, 0.3)


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_interrupted_dpo_resumes(tmp_path, tiny_models):
    run = settings(tmp_path, tiny_models["llama"], max_steps=5, save_steps=2, eval_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(run, printer=lambda line: None, callbacks=[Interrupt()])
    checkpoints = sorted((tmp_path / "work" / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2"]
    assert any(checkpoints[0].glob("*.safetensors"))
    assert not (tmp_path / "tuned").exists()
    lines = []
    result = train_dpo(run, printer=lines.append)
    assert result.resumed_from and result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 5
    assert any(line.startswith("resuming DPO from") for line in lines)
    assert any("ETA" in line for line in lines)
    assert (tmp_path / "tuned" / "config.json").exists()


def test_changed_settings_start_over(tmp_path, tiny_models):
    run = settings(tmp_path, tiny_models["llama"], max_steps=5, save_steps=2, eval_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(run, printer=lambda line: None, callbacks=[Interrupt()])
    changed = settings(tmp_path, tiny_models["llama"], max_steps=2, save_steps=2, eval_steps=2, beta=0.2)
    result = train_dpo(changed, printer=lambda line: None)
    assert result.resumed_from is None and result.steps == 2


def test_activation_checkpointing_trades_memory_only(tmp_path, tiny_models):
    """Recomputing activations in the backward pass gives the same weights, so the setting is not in the key (a
    build trained either way is reused)."""
    tuned = {}
    for flag in (False, True):
        run = settings(tmp_path / str(flag), tiny_models["llama"], max_steps=2, activation_checkpointing=flag)
        captured = {}
        train_dpo(
            run,
            printer=lambda line: None,
            on_trainer=lambda trainer, captured=captured: captured.update(on=trainer.model.is_activation_checkpointing),
        )
        assert captured["on"] is flag
        tuned[flag] = weights(tmp_path / str(flag) / "tuned")
        assert replace(run, activation_checkpointing=not flag).key() == run.key()
    assert replace(run, training=replace(run.training, beta=0.2)).key() != run.key()  # it sees what changes the result
    assert all(torch.equal(tuned[False][name], tuned[True][name]) for name in tuned[False])


DDP_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "accelerate" / "ddp.yaml"

# Run by `accelerate launch` in place of `-m neuron_explorer`: note each process's renames (its rank and the target)
# in $RENAMES, then run `python -m neuron_explorer` unchanged. Publishing a folder is a rename (cache/atomic.py).
RENAME_LOGGER = """
import os, runpy
replace = os.replace
def logged(source, target, *args, **kwargs):
    with open(os.environ["RENAMES"], "a") as log:
        log.write(os.environ["RANK"] + " " + str(target) + "\\n")
    return replace(source, target, *args, **kwargs)
os.replace = logged
runpy.run_module("neuron_explorer", run_name="__main__", alter_sys=True)
"""


def launch_dpo(tmp_path: Path, program: list[str], *argv: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file docs/accelerate/ddp.yaml PROGRAM train-dpo ARGV` on 2 CPU processes of one
    thread each (a free port, and no user accelerate config read)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(DDP_CONFIG),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        *program,
        "train-dpo",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"), "RENAMES": str(tmp_path / "renames")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


@pytest.mark.slow
def test_data_parallel_dpo_equals_one_process(tmp_path, tiny_models, one_torch_thread):
    """Two processes of 2 pairs each take the steps of one process of 2 pairs × 2 accumulated: accelerate's seeded
    sampler draws the same order of pairs and hands process k the k-th 2 of each 4, and DDP averages the two
    gradients as accumulation does, (a + b) / 2 = a / 2 + b / 2 exactly in floating point: the same weights bit for
    bit. One process of 4 pairs pads them to a common length, so its sums round differently: measured 7.9e-7 apart
    after 3 steps that move the weights by up to 3.0e-3, where a process drawing its own order of pairs lands 3.1e-3
    away. Only the main process reports and publishes the tuned model."""
    common = [
        "train-dpo",
        "--model",
        str(tiny_models["llama"]),
        "--pairs",
        str(write_pairs(tmp_path / "pairs.jsonl", 20)),
        "--steps",
        "3",
        "--lr",
        "1e-3",
        "--eval-pairs",
        "4",
        "--eval-steps",
        "1",
        "--save-steps",
        "1",
        "--patience",
        "0",
        "--device",
        "cpu",
    ]
    assert main([*common, "-o", str(tmp_path / "accumulated"), "--batch-size", "2", "--grad-accum", "2"]) == 0
    assert main([*common, "-o", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    (tmp_path / "logger.py").write_text(RENAME_LOGGER)
    launched = launch_dpo(
        tmp_path, [str(tmp_path / "logger.py")], *common[1:], "-o", str(tmp_path / "two"), "--batch-size", "2"
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    renames = [line.split(" ", 1) for line in (tmp_path / "renames").read_text().splitlines()]
    assert [rank for rank, target in renames if target == str(tmp_path / "two")] == ["0"], "published by every rank"

    lines = launched.stdout.splitlines()
    assert [line for line in lines if line.startswith("step 3/3  loss")] == [lines[-4]], "progress from every rank"
    assert lines[-1].startswith("3 steps of 4 pairs, 2 processes in ") and lines[-1].endswith(str(tmp_path / "two"))
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporaries
    assert not (tmp_path / "two.checkpoints" / "checkpoints").exists()
    records = {
        name: json.loads((tmp_path / name / "neuron_explorer_dpo.json").read_text())["result"]
        for name in ("accumulated", "one", "two")
    }
    assert [(r["world_size"], r["effective_batch"], r["steps"]) for r in records.values()] == [
        (1, 4, 3),
        (1, 4, 3),
        (2, 4, 3),
    ]
    assert records["two"]["kept_eval_loss"] == records["accumulated"]["kept_eval_loss"]

    base = weights(tiny_models["llama"])
    tuned = {name: weights(tmp_path / name) for name in records}
    assert max((tuned["two"][k] - base[k]).abs().max().item() for k in base) > 1e-3  # trained at all
    assert all(torch.equal(tuned["two"][k], tuned["accumulated"][k]) for k in base)
    assert max((tuned["two"][k] - tuned["one"][k]).abs().max().item() for k in base) < 1e-5

    evaluated = {}
    for name in ("one", "two"):  # the tuned folder loads and evaluates like any other
        loaded = load_model(str(tmp_path / name), device="cpu", dtype="float32")
        windows = [loaded.tokenizer(text)["input_ids"][:4] for text in PROMPTS]
        evaluated[name] = (generate_continuations(loaded, PROMPTS, new_tokens=8), perplexity(loaded, windows)[0])
    assert evaluated["two"][0] == evaluated["one"][0]
    assert evaluated["two"][1] == pytest.approx(evaluated["one"][1], rel=1e-5)


@pytest.mark.slow
def test_data_parallel_dpo_error_is_one_line(tmp_path, tiny_models):
    """A user error in the ranks ends the launch non-zero with the ranks' one-line message and none of our traceback
    (the launcher then reports the failed rank in its own words)."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 1)
    launched = launch_dpo(
        tmp_path,
        ["-m", "neuron_explorer"],
        "--model",
        str(tiny_models["llama"]),
        "--pairs",
        str(pairs),
        "-o",
        str(tmp_path / "two"),
        "--device",
        "cpu",
    )
    assert launched.returncode != 0
    assert "neuron-explorer: error: " + f"{pairs} holds 1 pair(s): DPO needs at least 2" in launched.stderr
    assert "neuron_explorer/" not in launched.stderr.replace("neuron_explorer FAILED", "")
    assert not (tmp_path / "two").exists()


def test_validation_sweep_runs(tmp_path, tiny_models, capsys):
    """bench/dpo_validation_sweep.py (how the DPO settings are chosen) runs end to end on a tiny model: one line at
    step 0 and at every `--every` steps, each with toxicity by both scorers and perplexity."""
    spec = importlib.util.spec_from_file_location(
        "dpo_validation_sweep", Path(__file__).parents[2] / "bench" / "dpo_validation_sweep.py"
    )
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    sweep.main(
        [
            "--model",
            str(tiny_models["llama"]),
            "--pairs",
            str(write_pairs(tmp_path / "pairs.jsonl")),
            "--steps",
            "2",
            "--every",
            "1",
            "--max-prompts",
            "3",
            "--window",
            "32",
            "--windows",
            "2",
            "--work-dir",
            str(tmp_path / "sweep"),
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert line["n_prompts"] == 3 and line["prompts"] == "builtin:rtp-validation"
        assert 0 <= line["toxicity"] <= 1 and 0 <= line["check_toxicity"] <= 1 and line["perplexity"] > 1


def test_kept_checkpoints_are_model_folders_that_compute_takes_as_a_series(tmp_path, tiny_models, one_torch_thread):
    """`keep_checkpoints`: every saved step is a model folder (weights, config, tokenizer; no optimizer) named by
    step, oldest first; they load, differ from each other, and `compute` takes them with the tuned model last."""
    import numpy as np

    from neuron_explorer.cache.reader import CacheReader
    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
    from neuron_explorer.spec.settings import RecordingSettings

    run = settings(tmp_path, tiny_models["llama"], max_steps=3, eval_steps=1, save_steps=1)
    result = train_dpo(run, printer=lambda line: None, keep_checkpoints=True)
    kept = [Path(folder) for folder in result.kept_checkpoints]
    assert [folder.name for folder in kept] == ["step-000001", "step-000002", "step-000003"]
    assert kept[0].parent == tmp_path / "work" / "steps"
    for folder in kept:
        assert (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()
        assert not (folder / "optimizer.pt").exists() and not (folder / "trainer_state.json").exists()
        assert load_model(str(folder), device="cpu", dtype="float32").model is not None
    steps = [weights(folder) for folder in kept]
    for earlier, later in zip(steps, steps[1:], strict=False):
        assert any(not torch.equal(earlier[k], later[k]) for k in earlier), "two kept steps hold the same weights"
    final = weights(tmp_path / "tuned")
    assert all(torch.equal(final[k], steps[result.kept_step - 1][k]) for k in final)

    (tmp_path / "prompts.txt").write_text("You are a stupid\nThe river runs\nI hate you\nWhat the hell\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), tmp_path / "probe.pt")
    computed = run_compute(
        ComputeSettings(
            base=str(tiny_models["llama"]),
            tuned=str(tmp_path / "tuned"),
            checkpoints=tuple(str(folder) for folder in kept),
            probe=str(tmp_path / "probe.pt"),
            prompts=str(tmp_path / "prompts.txt"),
            output=tmp_path / "dyn.h5",
            device="cpu",
            dtype="float32",
            recording=RecordingSettings(new_tokens=4, shared_continuation=True),
            cluster_top_k=20,
            n_clusters=2,
            patch_holdout=0.0,
            difference_lens=False,
        )
    )
    with CacheReader(computed.path) as reader:
        found = reader.dynamics()
    assert found is not None
    assert found["steps"] == [*(str(folder) for folder in kept), str(tmp_path / "tuned")]
    assert found["contribution"].shape[0] == 4 and np.isfinite(found["group_sums"]).all()


def test_without_the_flag_nothing_but_the_tuned_model_is_kept(tmp_path, tiny_models):
    result = train_dpo(settings(tmp_path, tiny_models["llama"], max_steps=2), printer=lambda line: None)
    assert result.kept_checkpoints == []
    assert not (tmp_path / "work" / "steps").exists() and not (tmp_path / "work" / "checkpoints").exists()


def test_the_command_line_keeps_checkpoints_and_says_where(tmp_path, tiny_models, capsys):
    """`train-dpo --keep-checkpoints` prints the folder of the kept steps and the compute command over them."""
    argv = ["train-dpo", "--model", str(tiny_models["llama"]), "--pairs", str(write_pairs(tmp_path / "pairs.jsonl"))]
    argv += ["-o", str(tmp_path / "tuned"), "--steps", "2", "--eval-steps", "1", "--batch-size", "2"]
    argv += ["--eval-pairs", "4", "--device", "cpu", "--keep-checkpoints"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    steps = tmp_path / "tuned.checkpoints" / "steps"
    assert f"kept 2 checkpoint(s), oldest first, in {steps}: step-000001 step-000002" in out
    assert f"--tuned {steps / 'step-000001'} --tuned {steps / 'step-000002'} --tuned {tmp_path / 'tuned'}" in out
