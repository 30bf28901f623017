"""Activation patching (METHOD §4): evaluate the base model of a cache with chosen neurons patched, ablated or edited,
and measure how much of DPO's toxicity reduction comes back:

  recovered = (tox_base − tox_run) / (tox_base − tox_dpo)

Each run evaluates toxicity, perplexity and F1 (METHOD §5, at the run-sized defaults of the evaluation options
below), the change of the last-layer probe projection, and stores its settings, metrics and sample generations
(prompt, base, patched, DPO) as a new file in FILE.h5.annotations/runs/. Base and DPO are evaluated with the same
settings once and reused.

Prompts: by default the ones `compute` kept aside (--patch-holdout), from which none of the cache's statistics
(groups, ā_pre, ā_dpo) were computed, so "recovered" is out of sample (out of template for the shipped prompts; out
of prompt, not out of template, for a prompt file compute was given). --prompts FILE evaluates on other prompts
(the run counts how many of them were statistics prompts and warns when any were); --in-sample evaluates on the
statistics prompts themselves, and the record says so.

Neuron sets (--set, repeatable; the union is taken):
  group:TP↓ (or TP-down), group:reducing, cluster:N, top:K:COLUMN, bottom:K:COLUMN, top:K:|COLUMN|,
  toxic:K (top K by cos_pre), toxic-active:K (among ā_pre > 0), auroc:K (the best toxicity detectors),
  ids:L12/N345,..., set:NAME, file:PATH,
  layer:N, all
Modes (--mode) and their parameters are listed at the end.
Positions: all (default; every position, perplexity included) or newest (the authors' protocol). Perplexity sees a
newest-position intervention as generation does, at every position (a pass scored token by token through the KV
cache equals one pass with the intervention everywhere); the record says how perplexity was measured.

--preset paper runs, in one command: base; DPO; ablate the top-128 toxic neurons; patch each reducing group
alone; patch all four; the tuning-free edit; and prints the table. By default its rows follow the authors'
protocol (the ablation zeroes value vectors at every position; patching and the edit act at the newest
position); --positions all|newest applies one choice to every row, and --mode patch-live or shift chooses how the
groups are patched (default patch-mean).

Data-parallel: `torchrun --nproc_per_node N -m neuron_explorer patch ...` deals each evaluation's batches out to
the processes and gathers toxicity, perplexity and F1; rank 0 stores the one run record.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from neuron_explorer.cache.atomic import write_json_atomically
from neuron_explorer.commands.arguments import output_file
from neuron_explorer.engine.defaults import default_cache_path
from neuron_explorer.engine.patching import modes
from neuron_explorer.spec import intervention
from neuron_explorer.spec.settings import RUN_EVALUATION, DeviceSettings, RunSettings, add_options, from_args

DATA_PARALLEL = True  # under torchrun/accelerate each process takes its share (cli.check_launch)
EVALUATION_OPTIONS = ("ppl_windows", "ppl_window", "f1_items", "new_tokens", "batch_size")  # of RUN_EVALUATION
HELP = "patch, ablate or edit neurons of the base model and measure how much of DPO's effect comes back"


def add_arguments(parser) -> None:
    parser.epilog = modes.describe()
    parser.add_argument("file", nargs="?", type=Path, default=None, help=f"the cache (default: {default_cache_path()})")
    what = parser.add_argument_group("intervention")
    intervention.add_arguments(what, preset=True)
    what.add_argument(
        "--preset",
        choices=("paper",),
        default=None,
        help="paper: the papers' table (ablate top-128 toxic; patch each ↓ group; all four; tuning-free)",
    )
    evaluation = parser.add_argument_group("evaluation (run-sized defaults)")
    evaluation.add_argument(
        "--prompts", default=None, help="prompt source (default: the prompts compute held out from the statistics)"
    )
    evaluation.add_argument(
        "--in-sample",
        action="store_true",
        help="evaluate on the prompts the statistics were computed from (for caches that hold "
        "out none; the record says so)",
    )
    add_options(evaluation, RunSettings(), names=("max_prompts",))
    add_options(evaluation, RUN_EVALUATION, names=EVALUATION_OPTIONS)
    add_options(evaluation, RunSettings(), names=("samples", "scorer", "corpus"))
    models = parser.add_argument_group("models (default: the specs recorded in the cache)")
    models.add_argument("--base", default=None)
    models.add_argument("--tuned", default=None)
    add_options(models, DeviceSettings())
    output = parser.add_argument_group("output")
    output.add_argument("--no-save", action="store_true", help="print the results; store no run")
    output.add_argument("--json", type=output_file, default=None, help="also write the runs' records here")
    output.add_argument(
        "--plan",
        action="store_true",
        help="print the model sizes, the memory the runs need and whether it fits (from the configs, "
        "before loading anything heavy), then a time estimate from a warm-up batch, and stop",
    )
    output.add_argument("--no-warm-up", action="store_true", help="with --plan: skip the warm-up (no model loads)")
    output.add_argument(
        "--progress-json",
        action="store_true",
        help="machine-readable progress: one JSON object per line on stdout (for the explorer)",
    )


def run(args) -> int:
    from neuron_explorer.commands.reporting import reporting
    from neuron_explorer.engine.model.distributed import current_ranks
    from neuron_explorer.events import ignore

    with reporting(json_lines=args.progress_json) as report:
        return _run(args, report if current_ranks().main else ignore)  # under torchrun rank 0 speaks for all


def _run(args, report) -> int:
    from neuron_explorer.engine.patching.runs import (
        PatchSession,
        check_spec,
        evaluation_prompts,
        format_runs_table,
        model_specs,
        paper_preset,
        shown,
    )
    from neuron_explorer.errors import UserError
    from neuron_explorer.events import Done, Message, Stored
    from neuron_explorer.spec.intervention import Intervention, PaperPreset, given_params

    if args.preset and (args.sets or args.mode not in (None, *modes.PRESET_PATCH_MODES)):
        raise UserError(
            f"--preset paper chooses its own sets and modes: leave out --set, and give --mode only as "
            f"{' or '.join(modes.PRESET_PATCH_MODES)} for its patch rows"
        )
    path = Path(args.file or default_cache_path()).expanduser()
    settings = replace(
        from_args(args, RunSettings()),
        prompts=args.prompts,
        in_sample=args.in_sample,
        evaluation=from_args(args, RUN_EVALUATION, EVALUATION_OPTIONS),
        base=args.base,
        tuned=args.tuned,
        device=args.device,
        dtype=args.dtype,
    )
    # a bad mode, parameter or positions fails here, before any file is read
    if args.preset:
        specs = paper_preset(PaperPreset.from_args(args), tuning_free=given_params(args))
    else:
        specs = [Intervention.from_args(args)]
    from neuron_explorer.cache.reader import CacheReader

    with CacheReader(path) as reader:  # a bad file, set or prompt choice fails here, before any model loads
        for spec in specs:
            check_spec(spec, reader)
        prompts, _ = evaluation_prompts(reader, settings)
        if args.plan:
            base, tuned = model_specs(reader, settings.base, settings.tuned)
    if args.plan:
        return print_plan(path, settings, specs, len(prompts.texts), base, tuned, warm_up=not args.no_warm_up)
    from neuron_explorer.cache.annotations import check_writable

    check_writable(path, ("baselines",) if args.no_save else ("runs", "baselines"))  # before the evaluations
    runs = []
    with PatchSession(path, settings, report=report) as session:
        for spec in specs:  # check every set and mode before the long part starts
            session.check(spec)
        session.plan(len(specs))
        baseline = session.ensure_baseline()
        for spec in specs:
            run = session.run(spec, save=not args.no_save)
            runs.append(run)
            if not args.no_save:
                report(Stored("run", run.run_id, label=spec.name(), metrics=run.metrics))
            report(
                Message(
                    f"{spec.name()}: toxicity {run.metrics['toxicity']:.4f}, recovered "
                    f"{shown(run.metrics['recovered'], '.1%')}, perplexity "
                    f"{shown(run.metrics['perplexity'], '.2f')} ({run.run_id})"
                )
            )
        table = format_runs_table(baseline, runs)
        prompt_record = session.prompt_record
    if args.json and session.ranks.main:
        record = {
            "baseline": {k: baseline[k] for k in ("key", "settings", "prompts")},
            "runs": [run.__dict__ for run in runs],
        }
        write_json_atomically(args.json, record)
    stored = "not stored (--no-save)" if args.no_save else f"stored in {path.name}.annotations/runs/"
    report(
        Done(
            f"{table}\n\n(scorer {settings.scorer}; {prompt_note(prompt_record)}; recovered = (tox_base − tox_run) / "
            f"(tox_base − tox_dpo); runs {stored})"
        )
    )
    return 0


def print_plan(path: Path, settings, specs, n_prompts: int, base: str, tuned: str, warm_up: bool) -> int:
    """`--plan`: sizes and memory at once (assuming base and DPO are still to be measured), then the warm-up's
    estimate for every evaluation the command would run."""
    from neuron_explorer.engine.model.planning import plan_patch
    from neuron_explorer.engine.patching import runs

    lockstep = any(modes.get(spec.mode).runs_tuned for spec in specs)
    plan = plan_patch(
        base,
        tuned,
        settings.evaluation,
        n_prompts,
        len(specs),
        device=settings.device,
        dtype=settings.dtype,
        lockstep=lockstep,
        baseline_stored=False,
    )
    print(plan.format(), flush=True)
    if warm_up:
        with runs.PatchSession(path, settings) as session:
            plan.counts["evaluations"] = len(specs) + (0 if session.baseline else 2)
            plan.estimate = runs.warm_up(plan, session)
        stored = "stored" if plan.counts["evaluations"] == len(specs) else "to be measured"
        print(
            f"{plan.estimate_line()}; {plan.counts['evaluations']} evaluations of "
            f"{n_prompts} prompts (base and DPO {stored})"
        )
    return 0


def prompt_note(record: dict) -> str:
    """Which prompts a run was evaluated on, and plainly whether they were among the statistics prompts."""
    note = f"{record['n']} prompts, {record['source']}"
    if record["in_statistics"]:
        return (
            f"{note}; WARNING: {record['in_statistics']} of them are statistics prompts (the groups, ā_pre and "
            f"ā_dpo were computed from them), so 'recovered' is in sample"
        )
    return f"{note}; none of them is a statistics prompt ({record.get('split', 'split by prompt')})"
