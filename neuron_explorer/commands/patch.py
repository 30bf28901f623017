"""Activation patching (METHOD §4): evaluate the base model of a cache with chosen neurons patched, ablated or edited,
and measure how much of DPO's toxicity reduction comes back:

  recovered = (tox_base − tox_run) / (tox_base − tox_dpo)

Each run evaluates toxicity, perplexity and F1 (METHOD §5, at a run-sized default: --max-prompts 100 of the
prompts that compute held out, 8 perplexity windows, 32 F1 passages), the change of the last-layer probe
projection, and stores its settings, metrics and sample generations (prompt, base, patched, DPO) as a new file in
FILE.h5.annotations/runs/. Base and DPO are evaluated with the same settings once and reused.

Prompts: by default the ones `compute` kept aside (--patch-holdout), from which none of the cache's statistics
(groups, ā_pre, ā_dpo) were computed, so "recovered" is out of sample. --prompts FILE evaluates on other prompts
(the run counts how many of them were statistics prompts and warns when any were); --in-sample evaluates on the
statistics prompts themselves, and the record says so.

Neuron sets (--set, repeatable; the union is taken):
  group:TP↓ (or TP-down), group:reducing, cluster:N, top:K:COLUMN, bottom:K:COLUMN, top:K:|COLUMN|,
  toxic:K (top K by cos_pre), toxic-active:K (among ā_pre > 0), ids:L12/N345,..., set:NAME, file:PATH,
  layer:N, all
Modes: shift (the default: add −α·δ per token), patch-mean (the DPO mean ā_dpo), scale (--factor), constant
(--value), zero-ablate, mean-ablate (ā_pre), tuning-free (v3 edit: --alpha 0.05 --beta 0.5, optional --set
restricts it), subtract (Lee: h_last − α ŵ; α defaults to DPO's measured change of the projection), patch-live
(the DPO model's own per-token activations: it runs in lockstep on the same tokens, about twice the cost).
Positions: all (default; every position, perplexity included) or newest (the authors' protocol). Perplexity sees a
newest-position intervention as generation does, at every position (a pass scored token by token through the KV
cache equals one pass with the intervention everywhere); the record says how perplexity was measured.

--preset paper runs, in one command: base; DPO; ablate the top-128 toxic neurons; patch each reducing group
alone; patch all four; the tuning-free edit; and prints the table. By default its rows follow the authors'
protocol (the ablation zeroes value vectors at every position; patching and the edit act at the newest
position); --positions all|newest applies one choice to every row, and --mode patch-live or shift chooses how the
groups are patched (default patch-mean).
"""

from __future__ import annotations

import json
from pathlib import Path

from neuron_explorer.engine.defaults import DEFAULT_PATCH_MODE, PATCH_MODES, default_cache_path

HELP = "patch, ablate or edit neurons of the base model and measure how much of DPO's effect comes back"


def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", type=Path, default=None,
                        help=f"the cache (default: {default_cache_path()})")
    what = parser.add_argument_group("intervention")
    what.add_argument("--set", dest="sets", action="append", default=[], metavar="SPEC",
                      help="neurons to act on (repeatable; the union is taken), e.g. group:TP↓, toxic:128")
    what.add_argument("--mode", choices=PATCH_MODES, default=None,
                      help=f"what to do to them (default: {DEFAULT_PATCH_MODE}; the preset's patch rows: patch-mean)")
    what.add_argument("--positions", choices=("all", "newest"), default=None,
                      help="every position (default) or the newest position of each forward call; the preset "
                           "follows the authors (ablation everywhere, patching at the newest position) unless given")
    what.add_argument("--alpha", type=float, default=None,
                      help="shift: multiple of δ (1); tuning-free: α (0.05); subtract: size (DPO's measured change)")
    what.add_argument("--beta", type=float, default=0.5, help="tuning-free: fraction of each sign class (0.5)")
    what.add_argument("--factor", type=float, default=0.5, help="scale: the factor (0.5)")
    what.add_argument("--value", type=float, default=0.0, help="constant: the value (0)")
    what.add_argument("--label", default=None, help="a name for the run (default: mode and sets)")
    what.add_argument("--preset", choices=("paper",), default=None,
                      help="paper: the papers' table (ablate top-128 toxic; patch each ↓ group; all four; tuning-free)")
    evaluation = parser.add_argument_group("evaluation (run-sized defaults)")
    evaluation.add_argument("--prompts", default=None,
                            help="prompt source (default: the prompts compute held out from the statistics)")
    evaluation.add_argument("--in-sample", action="store_true",
                            help="evaluate on the prompts the statistics were computed from (for caches that hold "
                                 "out none; the record says so)")
    evaluation.add_argument("--max-prompts", type=int, default=100, help="prompts for toxicity, 0 = all (100)")
    evaluation.add_argument("--ppl-windows", type=int, default=8, help="perplexity windows, 0 = all (8)")
    evaluation.add_argument("--ppl-window", type=int, default=256, help="tokens per perplexity window (256)")
    evaluation.add_argument("--f1-items", type=int, default=32, help="F1 passages, 0 = all (32)")
    evaluation.add_argument("--new-tokens", type=int, default=20, help="tokens generated per prompt (20)")
    evaluation.add_argument("--batch-size", type=int, default=32)
    evaluation.add_argument("--samples", type=int, default=8, help="sample generations stored with the run (8)")
    evaluation.add_argument("--scorer", default="profanity")
    evaluation.add_argument("--corpus", default="builtin")
    models = parser.add_argument_group("models (default: the specs recorded in the cache)")
    models.add_argument("--base", default=None)
    models.add_argument("--tuned", default=None)
    models.add_argument("--device", default="cpu")
    models.add_argument("--dtype", default="float32")
    output = parser.add_argument_group("output")
    output.add_argument("--no-save", action="store_true", help="print the results; store no run")
    output.add_argument("--json", type=Path, default=None, help="also write the runs' records here")
    output.add_argument("--progress-json", action="store_true",
                        help="machine-readable progress: one JSON object per line on stdout (for the explorer)")


def run(args) -> int:
    from neuron_explorer.commands.reporting import reporting

    with reporting(json_lines=args.progress_json) as report:
        return _run(args, report)


def _run(args, report) -> int:
    from neuron_explorer.engine.patching.runs import (PatchSession, PatchSpec, RunSettings, evaluation_prompts,
                                                 format_runs_table, paper_preset, shown)
    from neuron_explorer.events import Done, Message, Stored
    from neuron_explorer.errors import UserError

    for name in ("max_prompts", "ppl_windows", "f1_items", "samples"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more")
    if args.batch_size < 1 or args.new_tokens < 1 or args.ppl_window < 2:
        raise UserError("--batch-size and --new-tokens must be at least 1, --ppl-window at least 2")
    if args.preset and (args.sets or args.mode not in (None, "patch-mean", "patch-live", "shift")):
        raise UserError("--preset paper chooses its own sets and modes: leave out --set, and give --mode only as "
                        "patch-mean (default), patch-live or shift for its patch rows")
    if not args.preset and not args.sets and args.mode not in ("tuning-free", "subtract"):
        raise UserError("say which neurons to patch: --set SPEC (e.g. --set group:TP↓), or --preset paper")
    path = Path(args.file or default_cache_path()).expanduser()
    settings = RunSettings(prompts=args.prompts, in_sample=args.in_sample, max_prompts=args.max_prompts or None,
                           corpus=args.corpus, scorer=args.scorer, ppl_window=args.ppl_window,
                           ppl_windows=args.ppl_windows or None, f1_items=args.f1_items or None,
                           new_tokens=args.new_tokens, batch_size=args.batch_size, samples=args.samples,
                           base=args.base, tuned=args.tuned, device=args.device, dtype=args.dtype)
    if args.preset:
        specs = paper_preset(positions=args.positions, patch_mode=args.mode or "patch-mean",
                             alpha=0.05 if args.alpha is None else args.alpha, beta=args.beta)
    else:
        specs = [PatchSpec(args.mode or DEFAULT_PATCH_MODE, tuple(args.sets), args.positions or "all", alpha=args.alpha,
                           beta=args.beta, factor=args.factor, value=args.value, label=args.label)]
    from neuron_explorer.cache.reader import CacheReader
    from neuron_explorer.engine.patching.neuron_sets import resolve

    with CacheReader(path) as reader:  # a bad file, set or prompt choice fails here, before any model loads
        for spec in specs:
            if spec.sets:
                resolve(reader, spec.sets)
        evaluation_prompts(reader, settings)
    runs = []
    with PatchSession(path, settings, report=report) as session:
        for spec in specs:  # check every set and mode before the long part starts
            session.intervention(spec) if spec.mode != "subtract" else session.selection(spec)
        session.plan(len(specs))
        baseline = session.ensure_baseline()
        for spec in specs:
            run = session.run(spec, save=not args.no_save)
            runs.append(run)
            if not args.no_save:
                report(Stored("run", run.run_id, label=spec.name(), metrics=run.metrics))
            report(Message(f"{spec.name()}: toxicity {run.metrics['toxicity']:.4f}, recovered "
                           f"{shown(run.metrics['recovered'], '.1%')}, perplexity "
                           f"{shown(run.metrics['perplexity'], '.2f')} ({run.run_id})"))
        table = format_runs_table(baseline, runs)
        prompts = session.prompt_record
    if args.json:
        args.json.write_text(json.dumps({"baseline": {k: baseline[k] for k in ("key", "settings", "prompts")},
                                         "runs": [run.__dict__ for run in runs]}, indent=1, default=str))
    report(Done(f"{table}\n\n(scorer {settings.scorer}; {prompt_note(prompts)}; recovered = (tox_base − tox_run) / "
                f"(tox_base − tox_dpo); runs stored in {path.name}.annotations/runs/)"))
    return 0


def prompt_note(record: dict) -> str:
    """Which prompts a run was evaluated on, and plainly whether they were among the statistics prompts."""
    note = f"{record['n']} prompts, {record['source']}"
    if record["in_statistics"]:
        return (f"{note}; WARNING: {record['in_statistics']} of them are statistics prompts (the groups, ā_pre and "
                f"ā_dpo were computed from them), so 'recovered' is in sample")
    return f"{note}; none of them is a statistics prompt"

