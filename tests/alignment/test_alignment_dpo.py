"""DPO on a tiny random Llama: the policy moves, the reference does not, an interrupted run resumes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from neuron_explorer.engine.alignment.dpo import DPOSettings, train_dpo
from neuron_explorer.engine.alignment.pairs import save_pairs

PROMPTS = ["The quick brown fox", "She walked to the market", "The river runs through", "What the hell is",
           "You are a", "The old stone bridge", "She bought bread and", "Shut up and"]


def write_pairs(path: Path, n: int = 16) -> Path:
    pairs = [{"prompt": PROMPTS[i % len(PROMPTS)], "chosen": " the village under an old bridge.",
              "rejected": " a stupid idiot and I hate you.", "chosen_score": 0.0, "rejected_score": 1.0}
             for i in range(n)]
    save_pairs(pairs, path, {"test": True})
    return path


def settings(tmp_path: Path, policy: Path, **overrides) -> DPOSettings:
    base = dict(policy=str(policy), pairs=str(write_pairs(tmp_path / "pairs.jsonl")), output=str(tmp_path / "tuned"),
                work_dir=str(tmp_path / "work"), learning_rate=1e-3, max_steps=3, batch_size=2, eval_pairs=4,
                eval_steps=1, save_steps=1, patience=0, device="cpu", max_length=32)
    base.update(overrides)
    return DPOSettings(**base)


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
        train_dpo(run, printer=lambda line: None,
                  on_trainer=lambda trainer: captured.update(on=trainer.model.is_activation_checkpointing))
        assert captured["on"] is flag
        tuned[flag] = weights(tmp_path / str(flag) / "tuned")
        assert replace(run, activation_checkpointing=not flag).key() == run.key()
    assert replace(run, beta=0.2).key() != run.key()  # the key does see what changes the result
    assert all(torch.equal(tuned[False][name], tuned[True][name]) for name in tuned[False])
