"""DPO training with trl's DPOTrainer (METHOD §6).

Sigmoid loss, β = 0.1 by default, full fine-tuning of the policy against a frozen reference copy loaded from the
same folder, configurable learning rate / optimizer / steps / batch size, evaluation on held-out pairs every
`eval_steps` with early stopping on the held-out pair loss (as Lee et al.), the best evaluated step's weights kept,
safetensors checkpoints (with optimizer state) at every evaluation (every `save_steps` when nothing is held out), so
that every evaluated step can be the one kept, and resumption from the last checkpoint after an interruption. The
step whose weights were written is recorded (`kept_step`). The Trainer runs through `accelerate`: `accelerate launch -m
neuron_explorer train-dpo ...` spreads the
same command over several processes (data-parallel: each takes `batch_size` pairs per step, so a step sees
batch_size × processes × gradient_accumulation pairs); only the main process prints, prepares the checkpoint folder
and writes the tuned model, and the run record notes the number of processes (docs/scale.md).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neuron_explorer.cache.atomic import atomic_path
from neuron_explorer.cache.provenance import sha256_bytes
from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import DeviceSettings, DPOTraining, flat_record

RUN_FILE = "run.json"
# What transformers' Trainer writes into checkpoint-N (trainer_state.json last): a folder lacking any of them, or
# with a trainer_state.json cut short, was interrupted while saving and cannot be resumed from.
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
# `keep_checkpoints`: each saved checkpoint's model (weights, config, tokenizer), without the Trainer's state, in
# STEPS_DIR under the work folder, named by step so that names sort oldest first.
STEPS_DIR = "steps"
STEP_NAME = re.compile(r"step-\d+")
TRAINER_ONLY = re.compile(
    r"optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|training_args\.bin"
)


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(folder: Path) -> int:
    """The training step of a kept checkpoint folder (`step_folder_name`)."""
    return int(folder.name.removeprefix("step-"))


@dataclass
class DPOSettings:
    policy: str  # a local model folder with safetensors weights and a tokenizer
    pairs: str  # pairs JSONL (prompt, chosen, rejected)
    output: str  # the tuned model folder written at the end
    work_dir: str  # checkpoints live here
    training: DPOTraining = field(default_factory=DPOTraining)
    max_grad_norm: float = 10.0
    max_length: int = 96
    seed: int = 0
    device: str = DeviceSettings.device
    # Recompute activations in the backward pass: less memory for large models, about 20% slower, and the same
    # weights (bit for bit on the embedded model, 6 steps), so not part of the key.
    activation_checkpointing: bool = False

    def key(self) -> str:
        """Hash of everything that changes the result (not where it is written or how memory is traded)."""
        ignored = {"output", "work_dir", "device", "activation_checkpointing"}
        data = {k: v for k, v in flat_record(self).items() if k not in ignored}  # flat: keys of older runs hold
        return sha256_bytes(json.dumps(data, sort_keys=True).encode())


@dataclass
class DPOResult:
    output: Path
    steps: int
    kept_step: int  # the step whose weights were written: the best evaluated one, or the last without evaluation
    kept_eval_loss: float | None  # the held-out pair loss measured at kept_step
    stopped_early: bool
    resumed_from: str | None
    n_train_pairs: int
    n_eval_pairs: int
    seconds: float
    world_size: int  # processes of a data-parallel launch (1: a plain run)
    effective_batch: int  # pairs per optimizer step: batch_size × world_size × gradient_accumulation
    main_process: bool  # the one that reports and wrote `output` (the only one outside `accelerate launch`)
    log: list[dict] = field(default_factory=list)
    kept_checkpoints: list[str] = field(default_factory=list)  # with keep_checkpoints: model folders, oldest first

    def summary(self) -> dict:
        data = asdict(self)
        data["output"] = str(self.output)
        data.pop("log")
        data.pop("main_process")
        return data


def _progress_callback(printer):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step: step/max, loss, held-out loss, elapsed and ETA."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()
            self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            done = state.global_step - self.first_step
            elapsed = time.time() - self.start
            remaining = (state.max_steps - state.global_step) * elapsed / done if done else float("nan")
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "rewards/accuracies", "eval_rewards/accuracies", "rewards/margins"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4f}")
            parts.append(f"elapsed {elapsed:.0f}s")
            if math.isfinite(remaining):
                parts.append(f"ETA {remaining:.0f}s")
            printer("  ".join(parts))

    return Progress()


def _keep_steps_callback(steps: Path):
    """Copy each checkpoint the Trainer saves, less its optimizer and trainer state, to `steps/step-NNNNNN`: a model
    folder `load_model` and `compute --tuned` read (the main process only)."""
    from transformers import TrainerCallback

    class KeepSteps(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            target = steps / step_folder_name(state.global_step)
            steps.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, advice="free some space or choose another --work-dir") as partial:
                partial.mkdir(parents=True)
                for item in source.iterdir():
                    if item.is_file() and not TRAINER_ONLY.fullmatch(item.name):
                        shutil.copy2(item, partial / item.name)

    return KeepSteps()


def kept_step_folders(steps: Path) -> list[Path]:
    """The kept checkpoint folders in `steps`, oldest first."""
    if not steps.is_dir():
        return []
    return sorted(folder for folder in steps.iterdir() if folder.is_dir() and STEP_NAME.fullmatch(folder.name))


def _split_pairs(pairs: list[dict], eval_pairs: int, seed: int) -> tuple[list[dict], list[dict]]:
    import random

    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(eval_pairs, len(rows) // 5)
    eval_rows = [rows[i] for i in order[:n_eval]]
    train_rows = [rows[i] for i in order[n_eval:]]
    return train_rows, eval_rows


def _previous_run(run_file: Path) -> tuple[str | None, int]:
    """The settings key and the number of processes of the run that left the checkpoints (a step's pairs depend on
    both); key None when there is none or its record was cut short."""
    try:
        record = json.loads(run_file.read_text())
        return record.get("key"), record.get("world_size", 1)
    except (OSError, ValueError, AttributeError):
        return None, 1


def checkpoint_complete(folder: Path) -> bool:
    """Whether the Trainer finished saving `folder`: every file present and trainer_state.json whole."""
    if not all((folder / name).is_file() for name in CHECKPOINT_FILES):
        return False
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        return False
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except ValueError:
        return False
    return True


def last_complete_checkpoint(checkpoints: Path, printer=print) -> str | None:
    """The newest complete checkpoint-N in `checkpoints`, or None. Incomplete ones (a run killed while saving) are
    renamed to `checkpoint-N.incomplete` beside the folder, where the Trainer neither resumes from them nor counts
    them among the checkpoints it keeps."""
    found = sorted(
        (int(match[1]), folder)
        for folder in checkpoints.iterdir()
        if folder.is_dir() and (match := CHECKPOINT_NAME.fullmatch(folder.name))
    )
    last = None
    for _, folder in found:
        if checkpoint_complete(folder):
            last = folder
            continue
        aside = checkpoints.parent / f"{folder.name}.incomplete"
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        printer(f"{folder.name} was not saved completely (interrupted while saving?): set aside as {aside}")
    return str(last) if last else None


def _training_finished(checkpoint: Path, max_steps: int) -> bool:
    """Whether the Trainer stopped at `checkpoint` (a complete one): its last step, or an early stop."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
    return state.get("global_step", 0) >= max_steps or bool(control.get("should_training_stop"))


def _kept_step(state, best_at_end: bool) -> int:
    """The step whose weights training leaves in the model: the best checkpoint's when `best_at_end` and it was
    saved (Trainer.train loads it), else the last step's."""
    best = state.best_model_checkpoint
    if best_at_end and best and checkpoint_complete(Path(best)):
        match = CHECKPOINT_NAME.fullmatch(Path(best).name)
        if match is None:
            raise ValueError(f"the best checkpoint {best} is not named checkpoint-STEP")
        return int(match[1])
    return state.global_step


def _restore_finished(trainer, checkpoint: Path, best_at_end: bool) -> None:
    """Put the trainer where `train()` would have left it, had it not been killed: the state of `checkpoint` and
    the weights of the best checkpoint (when `best_at_end` and it is still there) or of `checkpoint`."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    kept = _kept_step(trainer.state, best_at_end)
    weights = checkpoint.parent / f"checkpoint-{kept}" if kept != trainer.state.global_step else checkpoint
    finished = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32, trust_remote_code=False)
    trainer.model.load_state_dict(finished.state_dict())


def train_dpo(
    settings: DPOSettings,
    *,
    resume: bool = True,
    printer=print,
    callbacks=(),
    keep_checkpoints: bool = False,
    on_trainer=None,
) -> DPOResult:
    """Train and write the tuned model (safetensors + tokenizer) to `settings.output`.

    Checkpoints go to `work_dir/checkpoints`; a run with the same settings resumes from the newest one, a run with
    different settings starts over (the old checkpoints are removed). `on_trainer(trainer)` runs after training
    (tests use it to inspect the policy and the reference). With `keep_checkpoints` every saved checkpoint is also
    kept as a model folder in `work_dir/steps/step-NNNNNN` (`DPOResult.kept_checkpoints`, oldest first); without
    it nothing but the tuned model remains."""
    from neuron_explorer.engine.model.loading import resolve_device

    policy, train_rows, eval_rows = _checked_inputs(settings)
    device = resolve_device(settings.device)
    work = Path(settings.work_dir).expanduser()
    checkpoints = work / "checkpoints"
    config = _dpo_config(settings, checkpoints, has_eval=len(eval_rows) > 0, on_cpu=device == "cpu")
    # The config set up accelerate's state. Under `accelerate launch` the main process alone prepares the checkpoint
    # folder, reports and writes; the others look for the checkpoint to resume from once it is done (when nothing is
    # left to set aside) and wait for the tuned model at the end.
    main, world_size = config.process_index == 0, config.world_size
    if world_size > 1 and ":" in device:
        raise UserError(
            f"--device {settings.device} picks one device, but under `accelerate launch` each process "
            f"takes its own from accelerate: pass --device auto, cuda or cpu"
        )
    say = printer if main else lambda line: None
    last = _prepare_checkpoints(config, settings, work, checkpoints, resume, say)
    steps = work / STEPS_DIR
    keeping = [_keep_steps_callback(steps)] if keep_checkpoints else []
    trainer = _trainer(config, settings, policy, train_rows, eval_rows, [_progress_callback(say), *keeping, *callbacks])
    start = time.time()
    _train(trainer, config, last, settings.training.max_steps, say)
    seconds = time.time() - start
    if on_trainer is not None:
        on_trainer(trainer)
    kept_step, kept_loss = _kept(trainer.state, config.load_best_model_at_end)
    result = DPOResult(
        output=Path(settings.output).expanduser(),
        steps=trainer.state.global_step,
        kept_step=kept_step,
        kept_eval_loss=kept_loss,
        stopped_early=trainer.state.global_step < settings.training.max_steps,
        resumed_from=last,
        n_train_pairs=len(train_rows),
        n_eval_pairs=len(eval_rows),
        seconds=seconds,
        world_size=world_size,
        effective_batch=(settings.training.batch_size * world_size * settings.training.gradient_accumulation),
        main_process=main,
        log=list(trainer.state.log_history),
        kept_checkpoints=[str(folder) for folder in kept_step_folders(steps)] if keep_checkpoints else [],
    )
    _write_tuned(trainer, config, settings, result)
    if main:
        shutil.rmtree(checkpoints, ignore_errors=True)
        for aside in work.glob("checkpoint-*.incomplete"):  # set aside by an interrupted run; of no use now
            shutil.rmtree(aside, ignore_errors=True)
    return result


def _checked_inputs(settings: DPOSettings) -> tuple[Path, list[dict], list[dict]]:
    """The policy folder and the pairs split into training and held-out rows, refused in one line before anything
    loads: a folder that is not a safetensors model, custom code, too few pairs."""
    from neuron_explorer.engine.alignment.pairs import load_pairs
    from neuron_explorer.engine.model.loading import refuse_custom_code

    policy = Path(settings.policy).expanduser()
    if not (policy / "config.json").exists():
        raise UserError(
            f"the policy {policy} is not a local model folder (no config.json): DPO trains from a "
            f"safetensors folder; for the embedded model pass 'embedded'"
        )
    refuse_custom_code(policy)
    pairs = load_pairs(settings.pairs)
    if len(pairs) < 2:
        raise UserError(f"{settings.pairs} holds {len(pairs)} pair(s): DPO needs at least 2")
    return (policy, *_split_pairs(pairs, settings.training.eval_pairs, settings.seed))


def _dpo_config(settings: DPOSettings, checkpoints: Path, *, has_eval: bool, on_cpu: bool):
    """trl's DPOConfig for `settings`: sigmoid loss in float32, evaluated and saved every `eval_steps` when there
    are held-out pairs, keeping the best evaluated step."""
    from trl import DPOConfig

    eval_steps = max(1, settings.training.eval_steps)
    # Saved where evaluated: the best step is kept only if its checkpoint exists (the Trainer otherwise keeps an
    # earlier saved one while reporting the best step's loss).
    save_steps = eval_steps if has_eval else max(1, settings.training.save_steps)
    return DPOConfig(
        output_dir=str(checkpoints),
        beta=settings.training.beta,
        loss_type=["sigmoid"],
        learning_rate=settings.training.learning_rate,
        optim=settings.training.optimizer,
        lr_scheduler_type="constant_with_warmup" if settings.training.warmup_steps else "constant",
        warmup_steps=settings.training.warmup_steps,
        max_grad_norm=settings.max_grad_norm,
        max_steps=settings.training.max_steps,
        per_device_train_batch_size=settings.training.batch_size,
        per_device_eval_batch_size=max(settings.training.batch_size, 8),
        gradient_accumulation_steps=settings.training.gradient_accumulation,
        activation_checkpointing=settings.activation_checkpointing,  # trl's default is on, under the old name
        max_length=settings.max_length,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(10, settings.training.eval_steps)),
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        use_cpu=on_cpu,
        gradient_checkpointing=False,
        ddp_find_unused_parameters=False,  # every weight takes part in the loss: no graph search at each step
        dataloader_num_workers=0,
        seed=settings.seed,
        data_seed=settings.seed,
        precompute_ref_log_probs=False,
    )


def _prepare_checkpoints(config, settings: DPOSettings, work: Path, checkpoints: Path, resume: bool, say) -> str | None:
    """The checkpoint to resume from, or None. The main process first removes the checkpoints of a run with other
    settings or another number of processes (its steps saw other pairs) and records this run's; every process then
    looks for the newest complete checkpoint."""
    with config.main_process_first(local=False, desc="preparing the checkpoint folder"):
        if config.process_index == 0:
            run_file = work / RUN_FILE
            if _previous_run(run_file) != (settings.key(), config.world_size) or not resume:
                shutil.rmtree(checkpoints, ignore_errors=True)
                shutil.rmtree(work / STEPS_DIR, ignore_errors=True)  # kept steps of that run
            checkpoints.mkdir(parents=True, exist_ok=True)
            run_file.write_text(
                json.dumps(
                    {"key": settings.key(), "world_size": config.world_size, "settings": flat_record(settings)},
                    indent=2,
                )
            )
        return last_complete_checkpoint(checkpoints, say) if resume else None


def _trainer(
    config, settings: DPOSettings, policy: Path, train_rows: list[dict], eval_rows: list[dict], callbacks: list
):
    """The DPOTrainer: the policy and a frozen copy of it as the reference, both float32, with early stopping on
    the held-out loss when there are held-out pairs."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32, trust_remote_code=False)
    reference = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32, trust_remote_code=False)
    reference.requires_grad_(False)
    reference.eval()
    has_eval = len(eval_rows) > 0
    if has_eval and settings.training.patience > 0:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=settings.training.patience)]
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our Progress callback prints one line per log instead of raw dicts
    return trainer


def _train(trainer, config, last: str | None, max_steps: int, say) -> None:
    """Train, resuming from `last`; a run killed after its last step is restored, not trained further."""
    if last and _training_finished(Path(last), max_steps):
        # Killed after the last step, before the tuned model was in place. Trainer.train resumed from here would
        # take one step more than --steps, so the model is taken as training left it.
        say(f"training had finished at {last}: writing the tuned model from it")
        _restore_finished(trainer, Path(last), config.load_best_model_at_end)
        return
    if last:
        say(f"resuming DPO from {last}")
    trainer.train(resume_from_checkpoint=last)


def _kept(state, best_at_end: bool) -> tuple[int, float | None]:
    """The step whose weights are written and its held-out loss; with `best_at_end` that must be the best evaluated
    step, or its checkpoint went missing and the model is not the one reported."""
    kept_step = _kept_step(state, best_at_end)
    kept_loss = next(
        (entry["eval_loss"] for entry in state.log_history if entry.get("step") == kept_step and "eval_loss" in entry),
        None,
    )
    if best_at_end and kept_loss != state.best_metric:
        raise RuntimeError(
            f"DPO kept step {kept_step} (held-out loss {kept_loss}), not the best evaluated step "
            f"{state.best_global_step} (loss {state.best_metric}): its checkpoint is missing"
        )
    return kept_step, kept_loss


def _write_tuned(trainer, config, settings: DPOSettings, result: DPOResult) -> None:
    """Write the tuned model atomically, with the tokenizer and a record of the settings and the training log.
    Every process takes part in saving (FSDP and ZeRO-3 gather the weights from all of them); the main one writes,
    and the others wait until it is in place (they may still be reading the best checkpoint)."""
    main = config.process_index == 0
    trainer.model.config.use_cache = True
    with atomic_path(result.output, advice="choose another -o") if main else nullcontext() as partial:
        trainer.save_model(str(partial) if main else None)  # the best checkpoint's weights when load_best_model_at_end
        if partial is not None:  # the main process: it holds the atomic path
            trainer.processing_class.save_pretrained(str(partial))
            (partial / "neuron_explorer_dpo.json").write_text(
                json.dumps(
                    {"settings": flat_record(settings), "result": result.summary(), "log": result.log},
                    indent=2,
                    default=str,
                )
            )
    config.distributed_state.wait_for_everyone()
