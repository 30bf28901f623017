"""Record a base model and its DPO-tuned copy on a prompt set and write one HDF5 cache with every neuron's
activation shift, value-vector cosines with the toxicity probe, contribution to toxicity reduction (Δ), the
four neuron groups and hierarchical clusters.

Data-parallel: `torchrun --nproc_per_node N -m neuron_explorer compute ...` (one process per GPU, or per CPU core
group with gloo) deals the batches out to the processes and adds their sums up; rank 0 writes the one cache.

With no arguments it runs offline on the embedded SmolLM2-135M-Instruct and its DPO-tuned copy (made by
`neuron-explorer build`), the build's trained probe, and the shipped held-out prompts.

Model specs: `embedded`, `embedded-dpo`, a local folder, a hub id (ORG/NAME[@REVISION]), or BASE+CHECKPOINT.pt
(e.g. gpt2-medium+policy.pt, Lee et al.'s DPO checkpoint as they ship it): a state dict, or one nested under
`state` (with `step_idx` and `metrics` beside it), `state_dict`, `model_state_dict` or `model`; keys may carry a
`model.` or `module.` prefix.
Probe: a .pt/.npy/.safetensors file (a (d), (1, d) or (2, d) tensor, or a state dict with `weight`),
`toxic-embedding` (toxic minus neutral seed words through the unembedding; our 20 and 20 words),
`toxic-embedding:authors` (Yang et al. v3's five and five), or `auto`.
Prompts: .jsonl (RealToxicityPrompts layout, or a prompt/text field), .txt (one per line), .csv/.parquet
(--prompt-column), builtin[:pairs|:heldout], or hub:NAME[:SPLIT].
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.markup import escape
from rich.table import Table

from neuron_explorer.commands.arguments import output_file
from neuron_explorer.engine.defaults import (
    DEFAULT_CLUSTER_TOP_K,
    DEFAULT_N_CLUSTERS,
    IDENTITY_SAMPLE_SIZE,
    LENS_TOP_N,
    PATCH_HOLDOUT,
    default_cache_path,
)
from neuron_explorer.spec.settings import (
    PROMPTS,
    SCORER,
    SCORER_CHOICES,
    DeviceSettings,
    RecordingSettings,
    add_options,
    from_args,
    positive_count,
)

DATA_PARALLEL = True  # under torchrun/accelerate each process takes its share (cli.check_launch)
HELP = "record a base/tuned model pair and write the neuron statistics to an HDF5 cache"


def lens_setting(text: str) -> str:
    """--lens: auto, all, or a count of neurons per ranking."""
    if text in ("auto", "all") or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is not auto, all, or a positive number of neurons")


def add_arguments(parser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--base", default="embedded", help="base model spec (default: %(default)s)")
    models.add_argument(
        "--tuned",
        action="append",
        default=None,
        metavar="SPEC",
        help="DPO-tuned model spec (default: embedded-dpo); repeated, the earlier ones are checkpoints "
        "of the last, oldest first, whose Δ per step the cache keeps (neuron dynamics)",
    )
    add_options(models, DeviceSettings())
    models.add_argument(
        "--device-map",
        default=None,
        help="auto: spread models larger than one GPU over the GPUs, then the CPU, then disk "
        "(accelerate's big-model loading)",
    )
    models.add_argument(
        "--max-memory",
        default=None,
        metavar="DEVICE=SIZE,...",
        help="with --device-map: the most each device may hold, e.g. 0=20GiB,1=20GiB,cpu=100GiB",
    )
    data = parser.add_argument_group("probe and prompts")
    data.add_argument(
        "--probe",
        default="auto",
        help="probe file, toxic-embedding (our seed words), toxic-embedding:authors (Yang et al. v3's), "
        "or auto (default: %(default)s)",
    )
    data.add_argument("--prompts", default=PROMPTS, help="prompt source (default: %(default)s)")
    data.add_argument("--prompt-column", default=None, help="text column of a CSV/Parquet/JSONL/hub prompt set")
    data.add_argument(
        "--max-prompts",
        type=positive_count,
        default=None,
        metavar="N",
        help="use only the first N prompts (default: all)",
    )
    data.add_argument(
        "--detector-scorer",
        default=SCORER,
        help="scorer that labels the base continuations toxic (> 0.5) or not for each neuron's "
        f"detector AUROC: {SCORER_CHOICES} (default: %(default)s)",
    )
    data.add_argument(
        "--patch-holdout",
        type=float,
        default=PATCH_HOLDOUT,
        metavar="FRACTION",
        help="keep this fraction of the prompts aside, unrecorded, for patch runs to evaluate on out "
        "of sample (the shipped prompts by template, others evenly spread: out of prompt, not out "
        "of template); 0 keeps none (default: %(default)g)",
    )
    recording = parser.add_argument_group("recording (default: Yang et al. v3's positions)")
    add_options(recording, RecordingSettings())
    recording.add_argument(
        "--no-difference-lens",
        dest="difference_lens",
        action="store_false",
        help="skip the pass that measures where the pair differs on the perplexity corpus and the "
        "prompts (residual difference per layer, next-token KL)",
    )
    recording.add_argument(
        "--identity-check",
        default=str(IDENTITY_SAMPLE_SIZE),
        metavar="N|all",
        help="prompts (spread evenly) on which a separate pass measures what each MLP writes into "
        "the residual stream, to check the recorded statistics (default: %(default)s)",
    )
    recording.add_argument(
        "--lens",
        type=lens_setting,
        default="auto",
        metavar="auto|all|N",
        help="which value vectors get their promoted and suppressed tokens (the logit lens, "
        "neurons × vocabulary × d_model): all, the top N by each of |Δ|, |δ| and |cos|, or "
        f"auto: all on a GPU or for a small model, else the top {LENS_TOP_N} (the lab's model "
        "worker computes others on demand; default: %(default)s)",
    )
    clusters = parser.add_argument_group("clustering")
    clusters.add_argument(
        "--cluster-top-k",
        type=positive_count,
        default=DEFAULT_CLUSTER_TOP_K,
        help="cluster the top K neurons by |Δ| (default: %(default)s)",
    )
    clusters.add_argument(
        "--clusters",
        type=positive_count,
        default=DEFAULT_N_CLUSTERS,
        help="flat clusters at the stored cut (default: %(default)s)",
    )
    parser.add_argument(
        "-o", "--output", type=output_file, default=None, help=f"cache file to write (default: {default_cache_path()})"
    )
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help="machine-readable progress: one job event (JSON) per line on stdout",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the model sizes, the memory each device will need and whether it fits (read from "
        "the configs, before loading anything heavy), then a time estimate from one warm-up "
        "batch, and stop; nothing is written",
    )
    parser.add_argument("--no-warm-up", action="store_true", help="with --plan: skip the warm-up (no model loads)")


def run(args) -> int:
    from neuron_explorer.commands.reporting import console, reporting
    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
    from neuron_explorer.events import Done

    settings = ComputeSettings(
        base=args.base,
        tuned=(args.tuned or ["embedded-dpo"])[-1],
        checkpoints=tuple((args.tuned or [])[:-1]),
        probe=args.probe,
        prompts=args.prompts,
        prompt_column=args.prompt_column,
        output=args.output or default_cache_path(),
        recording=from_args(args, RecordingSettings()),
        max_prompts=args.max_prompts,
        patch_holdout=args.patch_holdout,
        identity_check=identity_sample(args.identity_check),
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        max_memory=args.max_memory,
        cluster_top_k=args.cluster_top_k,
        n_clusters=args.clusters,
        lens=args.lens,
        detector_scorer=args.detector_scorer,
        difference_lens=args.difference_lens,
    )
    if args.plan:
        return print_plan(settings, warm_up=not args.no_warm_up)
    if args.output is None:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
    with reporting(json_lines=args.progress_json) as report:
        result = run_compute(settings, report=report)
        if result is None:  # a rank of a torchrun launch other than rank 0, which writes and reports
            return 0
        report(Done())
    print_summary(result, console)
    if not (result.checks["identity_passed"] and result.checks["pooling_passed"]):
        console.print(
            f"the statistics of {result.path} failed their own check (above): the file is kept for "
            f"inspection, but do not publish its numbers",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


def print_plan(settings, warm_up: bool) -> int:
    """`--plan`: the plan at once, then the warm-up's time estimate."""
    from neuron_explorer.engine.neurons import compute

    plan, texts = compute.plan_compute_run(settings)
    print(plan.format(), flush=True)
    if warm_up:
        plan.estimate = compute.warm_up(plan, settings, texts)
        print(plan.estimate_line())
    return 0


def identity_sample(text: str) -> int | None:
    """The --identity-check value: a number of prompts, or None for all."""
    from neuron_explorer.errors import UserError

    if text == "all":
        return None
    if not (text.isdigit() and int(text) >= 1):
        raise UserError(f"--identity-check must be a number of prompts (at least 1) or 'all', not '{text}'")
    return int(text)


def print_summary(result, console) -> None:
    """Group shares, headline sums and the worst identity residual, as the run's last words."""
    for part in share_report(result.groups, result.summary, result.path):
        console.print(part)
    for line in identity_report(result.layers, result.checks, result.identity_prompts):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"wrote {escape(str(result.path))}  ({', '.join(f'{k} {v:.1f}s' for k, v in result.seconds.items())})"
    )


def identity_report(layers: dict, checks: dict, n_prompts: int) -> list[str]:
    """The identity check and the totals check, each with its verdict, labelled by the prompts it covers."""
    verdict = {True: "pass", False: "FAIL"}
    lines = [
        f"identity check on {n_prompts} prompts, a separate pass reading each MLP's write where the block takes "
        f"it ({checks['identity_dtype']}; passes at ≤ {checks['identity_tolerance']:.1e} of the mean ‖write‖/√d_model):"
    ]
    for name, label in (("pre", "base"), ("dpo", "tuned")):
        relative = abs(layers[f"residual_{name}"]) / np.maximum(layers[f"write_scale_{name}"], 1e-30)
        lines.append(
            f"  {label:<5} |Σ P + b·ŵ − measured write| ≤ {abs(layers[f'residual_{name}']).max():.1e} "
            f"(relative {relative.max():.1e})"
        )
    change = abs(layers["change_residual"])
    lines.append(
        f"  Σ Δ on those {n_prompts} prompts − (measured change − bias change) ≤ {change.max():.1e} "
        f"(largest measured change {abs(layers['measured_change']).max():.2e})"
    )
    lines.append(f"  identity: {verdict[checks['identity_passed']]}")
    lines.append(
        f"published ā against the per-prompt means of every prompt: relative ≤ "
        f"{checks['pooling_relative']:.1e} (passes at ≤ {checks['pooling_tolerance']:.0e}): "
        f"{verdict[checks['pooling_passed']]}"
    )
    return lines


def share_report(groups: dict, summary: dict, path) -> list:
    """The group table with both group definitions labelled (METHOD §3), the Δ totals and the v2 headline."""
    table = Table(title=f"neuron groups — {escape(str(path))}", title_justify="left")
    table.add_column("group")
    for column in ("v1 neurons", "v1 Σ Δ", "v1 share", "v3 neurons", "v3 Σ Δ", "v3 share", "v3 firing", "v3 writing"):
        table.add_column(column, justify="right")
    for i, name in enumerate(groups["group"]):
        table.add_row(
            name,
            f"{groups['count'][i]:,}",
            f"{groups['sum_contribution'][i]:+.4g}",
            f"{groups['share_v1'][i]:.1%}",
            f"{groups['count_v3'][i]:,}",
            f"{groups['sum_contribution_v3'][i]:+.4g}",
            f"{groups['share_v3'][i]:.1%}",
            f"{groups['sum_activation_term_v3'][i]:+.4g}",
            f"{groups['sum_weight_term_v3'][i]:+.4g}",
        )
    totals = (
        f"Σ positive Δ {summary['sum_positive_contribution']:+.4g}   "
        f"Σ negative Δ {summary['sum_negative_contribution']:+.4g}   net Δ {summary['net_contribution']:+.4g} "
        f"= firing (δ·p_pre) {summary['net_activation_term']:+.4g} + writing (ā_dpo·(p_pre − p_dpo)) "
        f"{summary['net_weight_term']:+.4g}"
    )
    top_toxic = (
        f"v2 top-{summary['top_toxic_k']} toxic neurons (largest cos; the {summary['top_toxic_kept']} with "
        f"ā_pre > 0 and δ > 0): Σ Δ {summary['top_toxic_sum']:+.4g} = {summary['top_toxic_share']:.1%} of "
        f"Σ positive Δ"
    )
    definitions = (
        "v1 groups (sign of δ): all neurons with the group's signs; share of the 4 ↓ groups' Σ Δ (↑ rows: "
        "of the 4 ↑)\nv3 (Δ > 0 by sign class; ↑ rows Δ < 0): share of Σ positive Δ (↑ rows: of Σ negative Δ)"
    )
    return [table, definitions, totals, top_toxic]
