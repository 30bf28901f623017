"""DPO with trl's DPOTrainer: sigmoid loss (β = 0.1 by default), full fine-tuning against a frozen reference copy,
early stopping on held-out pairs, progress with ETA, safetensors checkpoints. Rerunning the same command after an
interruption resumes from the last checkpoint. Runs through accelerate: `accelerate launch -m neuron_explorer
train-dpo ...` spreads it over several processes unchanged, each taking --batch-size pairs per step (a step sees
batch size × processes × --grad-accum pairs); docs/scale.md has tested launch commands.
"""

from __future__ import annotations

from pathlib import Path

from neuron_explorer.commands.arguments import output_folder, readable_file
from neuron_explorer.spec.settings import DeviceSettings, DPOTraining, add_options, from_args

DATA_PARALLEL = True  # under torchrun/accelerate each process takes its share (cli.check_launch)
HELP = "DPO-tune a model on preference pairs (trl), resumable"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", default="embedded", help="policy: embedded or a local model folder (default: %(default)s)"
    )
    parser.add_argument("--pairs", type=readable_file, required=True, help="pairs JSONL from make-pairs")
    parser.add_argument(
        "-o",
        "--output",
        type=output_folder,
        default=None,
        help="tuned model folder (default for the embedded model: the embedded-dpo folder)",
    )
    parser.add_argument(
        "--work-dir", type=output_folder, default=None, help="checkpoints (default: OUTPUT.checkpoints)"
    )
    add_options(parser, DPOTraining())
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory (large models), about 20%% "
        "slower, the same result",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every evaluated/saved checkpoint as a model folder (WORK_DIR/steps/step-N, oldest first) for "
        "compute --tuned STEP ... --tuned OUTPUT",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_options(
        parser,
        DeviceSettings(),
        names=("device",),
        notes={"device": "; under accelerate launch auto, cpu or cuda; the weights train in float32"},
    )


def run(args) -> int:
    from neuron_explorer.engine.alignment.dpo import STEPS_DIR, DPOSettings, train_dpo
    from neuron_explorer.engine.model.loading import _locate, embedded_tuned_dir
    from neuron_explorer.errors import UserError

    if args.model == "embedded":
        from neuron_explorer.engine.model.loading import materialize_embedded

        policy = materialize_embedded()
        output = args.output or embedded_tuned_dir()
    else:
        folder, name, revision = _locate(args.model)
        if folder is None:  # a hub id: trl trains from a local folder, so fetch (or find) the snapshot
            if name is None:  # _locate names the hub model whenever it finds no folder
                raise RuntimeError(f"--model {args.model}: neither a local folder nor a hub name")
            try:
                from huggingface_hub import snapshot_download

                folder = Path(
                    snapshot_download(
                        name, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
                    )
                )
            except Exception as error:  # offline, or no such model
                raise UserError(
                    f"--model {args.model}: cannot fetch it from the hub ({type(error).__name__}); "
                    f"DPO trains from a local safetensors folder: download it and pass the folder"
                ) from error
        policy = folder
        if args.output is None:
            raise UserError("pass -o FOLDER for the tuned model")
        output = args.output
    output = Path(output)
    work = args.work_dir or output.with_name(output.name + ".checkpoints")
    settings = DPOSettings(
        policy=str(policy),
        pairs=str(args.pairs),
        output=str(output),
        work_dir=str(work),
        training=from_args(args, DPOTraining()),
        seed=args.seed,
        device=args.device,
        activation_checkpointing=args.activation_checkpointing,
    )
    try:
        result = train_dpo(settings, resume=not args.fresh, keep_checkpoints=args.keep_checkpoints)
    except Exception as error:  # a checkpoint that fails to save (a full disk) is the Trainer's or torch's error
        from neuron_explorer.cache.atomic import write_failure_message

        message = write_failure_message(error, work, "free some space or choose another --work-dir")
        if message is None:
            raise
        raise UserError(message) from None
    if result.main_process:
        processes = f", {result.world_size} processes" if result.world_size > 1 else ""
        print(
            f"{result.steps} steps of {result.effective_batch} pairs{processes} in {result.seconds:.0f}s on "
            f"{result.n_train_pairs} pairs (kept step {result.kept_step}, held-out loss {result.kept_eval_loss}"
            f"{', stopped early' if result.stopped_early else ''}) -> {result.output}"
        )
        if args.keep_checkpoints:
            folders = [Path(folder) for folder in result.kept_checkpoints]
            where = folders[0].parent if folders else Path(work) / STEPS_DIR
            print(f"kept {len(folders)} checkpoint(s), oldest first, in {where}: {' '.join(f.name for f in folders)}")
            series = " ".join(f"--tuned {folder}" for folder in [*folders, result.output])
            print(f"dynamics: neuron-explorer compute {series}")
    return 0
