"""Build the whole embedded default offline: materialize SmolLM2-135M-Instruct, train the toxicity probe, make
preference pairs, run DPO, evaluate base and DPO (toxicity on the held-out and on the real RTP validation prompts,
perplexity, F1), compute the neuron statistics, and write one HDF5 cache that records all of it (open it with
`neuron-explorer`).

Each stage keeps its outputs and a manifest in the work directory (default: ~/.cache/neuron-explorer/build) and is
skipped when its inputs are unchanged, so a second run takes seconds. The first takes about 20 minutes on a
2-core CPU. Needs no network, no GPU and no data.
"""

from __future__ import annotations

import argparse

from neuron_explorer.commands.arguments import output_file, output_folder
from neuron_explorer.engine.build import STAGES, BuildSettings
from neuron_explorer.spec.settings import (
    DeviceSettings,
    DPOTraining,
    EvaluationSettings,
    ScorerSettings,
    add_options,
    from_args,
    positive_count,
)

# The shared settings' options the build takes (the rest keep their defaults); read back with these names only.
DPO_OPTIONS = ("beta", "learning_rate", "max_steps", "batch_size")
EVALUATION_OPTIONS = ("ppl_windows", "f1_items")
HELP = "build the embedded default (probe, pairs, DPO, evaluation, statistics) offline, with cached stages"


def add_arguments(parser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=output_file,
        default=None,
        help="cache file to write (default: ~/.cache/neuron-explorer/embedded-default.h5)",
    )
    parser.add_argument(
        "--work-dir",
        type=output_folder,
        default=None,
        help="where stages keep their outputs (default: ~/.cache/neuron-explorer/build)",
    )
    parser.add_argument(
        "--force",
        nargs="*",
        metavar="STAGE",
        default=None,
        help=f"rerun these stages (all when none is named): {', '.join(STAGES)}",
    )
    parser.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    add_options(
        parser,
        DeviceSettings(),
        names=("device",),
        notes={
            "device": "; the embedded model runs in float32 everywhere (it trains, and its figures "
            "compare across machines)"
        },
    )
    add_options(parser, ScorerSettings(), notes={"scorer": "; labels the probe, picks the pairs and grades the result"})
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    pairs = parser.add_argument_group("pairs")
    pairs.add_argument(
        "--samples", type=positive_count, default=3, help="sampled continuations per prompt (default: %(default)s)"
    )
    pairs.add_argument(
        "--pair-method",
        default="best-of-n",
        choices=["best-of-n", "steer", "both"],
        help="how rejected continuations are made (default: %(default)s)",
    )
    pairs.add_argument(
        "--chosen",
        default="least-toxic",
        choices=["least-toxic", "greedy"],
        help="chosen continuation: the least toxic candidate or the greedy one (Lee et al.) (default: %(default)s)",
    )
    pairs.add_argument("--margin", type=float, default=0.3, help="min rejected - chosen score (default: %(default)s)")
    dpo = parser.add_argument_group("DPO")
    add_options(dpo, DPOTraining(), names=DPO_OPTIONS)
    ev = parser.add_argument_group("evaluation")
    add_options(ev, EvaluationSettings(), names=EVALUATION_OPTIONS)
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help="machine-readable progress: one job event (JSON) per line on stdout (for the explorer)",
    )


def run(args) -> int:
    from neuron_explorer.commands.reporting import reporting
    from neuron_explorer.engine.build import run_build
    from neuron_explorer.errors import UserError
    from neuron_explorer.events import Done

    force: bool | set[str] = False
    if args.force is not None:
        unknown = set(args.force) - set(STAGES)
        if unknown:
            raise UserError(f"unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(STAGES)}")
        force = set(args.force) if args.force else True
    settings = build_settings(args, force)
    with reporting(json_lines=args.progress_json) as report:
        result = run_build(settings, report)
        report(Done(summary(result, args)))
    return 0


def build_settings(args: argparse.Namespace, force: bool | set[str] = False) -> BuildSettings:
    """The build's settings from its parsed options: with none given, every shared setting at its one default."""
    return BuildSettings(
        work_dir=args.work_dir,
        output=args.output,
        scoring=from_args(args, ScorerSettings()),
        device=args.device,
        until=args.until,
        seed=args.seed,
        n_samples=args.samples,
        pair_method=args.pair_method,
        chosen=args.chosen,
        margin=args.margin,
        dpo=from_args(args, DPOTraining(), DPO_OPTIONS),
        evaluation=from_args(args, EvaluationSettings(), EVALUATION_OPTIONS),
        force=force,
    )


def toxicity_line(label: str, base: dict, dpo: dict, check_scorer: str, perplexity: bool) -> str:
    """Base → DPO toxicity on one prompt set with its ratio, the check scorer's where it ran, and perplexity."""

    def ratio(key: str) -> str:
        return f"{dpo[key] / max(base[key], 1e-9):.2f}x"

    line = (
        f"{label} toxicity base {base['toxicity']:.3f} -> DPO {dpo['toxicity']:.3f} ({ratio('toxicity')}, "
        f"{base['n_prompts']} prompts)"
    )
    if base.get("check_toxicity") == base.get("check_toxicity"):  # not NaN: the check scorer ran
        line += (
            f"; by {check_scorer} {base['check_toxicity']:.3f} -> {dpo['check_toxicity']:.3f} "
            f"({ratio('check_toxicity')})"
        )
    if perplexity:
        line += f"; perplexity {base['perplexity']:.2f} -> {dpo['perplexity']:.2f} ({base['n_tokens']} tokens)"
    return line


def summary(result, args) -> str:
    """The closing text: each stage's status and time, the held-out evaluation, where the cache is."""
    lines = ["stage        status    seconds"]
    for outcome in result.outcomes:
        lines.append(f"{outcome.name:<12} {'skipped' if outcome.skipped else 'ran':<9} {outcome.seconds:8.1f}")
    ev = result.evaluation
    lines.append("")
    for label, figures, extra in (("held-out", ev, True), ("RTP validation", ev.get("rtp_validation", {}), False)):
        if "base" in figures and "dpo" in figures:
            lines.append(toxicity_line(label, figures["base"], figures["dpo"], args.check_scorer, extra))
    if args.until:
        lines.append(f"\nstopped after the {args.until} stage")
    else:
        lines.append(f"\ncache: {result.output}\nopen it with: neuron-explorer {result.output}")
    return "\n".join(lines)
