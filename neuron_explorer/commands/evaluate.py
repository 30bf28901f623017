"""Evaluate models by the METHOD §5 protocol: toxicity of greedy 20-token continuations of the prompts (prompt
truncated to 32 tokens, continuation scored alone), true perplexity over fixed-size windows of the neutral corpus,
and bag-of-words F1 of 20-token continuations of corpus passages. Each number comes with its count. With several
models it prints one Markdown table, with ratios to the first.

Data-parallel: `torchrun --nproc_per_node N -m neuron_explorer evaluate ...` deals the batches of prompts, windows
and passages out to the processes and gathers the metrics; rank 0 prints and writes --json.
"""

from __future__ import annotations

from neuron_explorer.cache.atomic import write_json_atomically
from neuron_explorer.commands.arguments import output_file
from neuron_explorer.spec.settings import (
    CORPUS,
    PROMPTS,
    DeviceSettings,
    EvaluationSettings,
    ScorerSettings,
    add_options,
    from_args,
    positive_count,
)

DATA_PARALLEL = True  # under torchrun/accelerate each process takes its share (cli.check_launch)
EVALUATION_OPTIONS = ("ppl_window", "ppl_windows", "f1_items", "batch_size")  # of EvaluationSettings
HELP = "toxicity, perplexity and F1 of one or more models (METHOD §5)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        default=["embedded", "embedded-dpo"],
        help="model specs, NAME=SPEC to label them (default: %(default)s)",
    )
    parser.add_argument(
        "--prompts",
        default=PROMPTS,
        help="prompt source: builtin:heldout, builtin:rtp-validation (399 real RealToxicityPrompts "
        "challenge prompts), a file or hub:NAME (default: %(default)s)",
    )
    parser.add_argument("--prompt-column", default=None)
    parser.add_argument(
        "--max-prompts",
        type=positive_count,
        default=None,
        metavar="N",
        help="use only the first N prompts (default: all)",
    )
    add_options(parser, ScorerSettings())
    parser.add_argument(
        "--corpus", default=CORPUS, help="builtin (CPython docs), a file, or hub:wikitext (default: %(default)s)"
    )
    add_options(parser, EvaluationSettings(), names=EVALUATION_OPTIONS)
    add_options(parser, DeviceSettings())
    parser.add_argument("--json", type=output_file, default=None, help="write metrics and generations as JSON here")


def run(args) -> int:
    from neuron_explorer.engine.measure.corpora import load_corpus
    from neuron_explorer.engine.measure.evaluation import evaluate, format_table
    from neuron_explorer.engine.measure.prompts import load_prompts
    from neuron_explorer.engine.measure.scoring import get_scorer
    from neuron_explorer.engine.model.distributed import current_ranks
    from neuron_explorer.engine.model.loading import load_model

    scoring = from_args(args, ScorerSettings())
    scorer = get_scorer(scoring.scorer)
    check_scorer = get_scorer(scoring.check_scorer) if scoring.check_scorer else None
    prompts = load_prompts(args.prompts, column=args.prompt_column, max_prompts=args.max_prompts)
    corpus = load_corpus(args.corpus)
    settings = from_args(args, EvaluationSettings(), EVALUATION_OPTIONS)
    ranks = current_ranks()
    say = print if ranks.main else (lambda *_: None)  # under torchrun rank 0 speaks for all
    results = {}
    for item in args.models:
        name, _, spec = item.partition("=") if "=" in item else (item, "", item)
        loaded = load_model(spec, device=ranks.device(args.device), dtype=args.dtype)
        say(f"evaluating {name} ...")
        results[name] = evaluate(
            loaded,
            prompts.texts,
            scorer,
            corpus=corpus,
            settings=settings,
            progress=lambda line: say("  " + line),
            check_scorer=check_scorer,
            ranks=ranks,
        )
        del loaded
    if not ranks.main:
        return 0
    print()
    print(format_table(results))
    check = f", check scorer {check_scorer.name}" if check_scorer else ""
    print(
        f"\n(scorer {scorer.name}{check}; prompts {prompts.source}; corpus {corpus.source}, "
        f"{args.ppl_window}-token windows)"
    )
    if args.json:
        record = {
            "results": {k: v.to_dict() for k, v in results.items()},
            "prompts": prompts.provenance(),
            "corpus": corpus.provenance(),
            "scorer": scorer.describe(),
            "check_scorer": check_scorer.describe() if check_scorer else None,
            "distributed": ranks.provenance(),
        }
        write_json_atomically(args.json, record, indent=2)
    return 0
