"""Make DPO preference pairs offline, in the style of Lee et al.: chosen = the base model's greedy continuation;
rejected = the most toxic of best-of-n sampled continuations and/or continuations sampled while steering the model
along the probe direction (a PPLM-like single gradient step on a linear probe: adding the probe direction to the
last block's residual stream). Pairs whose rejected score does not exceed the chosen score by --margin are dropped.
Writes JSONL (prompt, chosen, rejected, scores, method) and a .provenance.json beside it.
"""

from __future__ import annotations

from neuron_explorer.commands.arguments import output_file
from neuron_explorer.spec.settings import DeviceSettings, ScorerSettings, add_options, non_negative, positive_count

HELP = "make preference pairs (greedy vs best-of-n / probe-steered toxic continuations)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="embedded", help="base model spec (default: %(default)s)")
    parser.add_argument("--prompts", default="builtin:pairs", help="prompt source (default: %(default)s)")
    parser.add_argument("--prompt-column", default=None)
    parser.add_argument(
        "--max-prompts",
        type=positive_count,
        default=None,
        metavar="N",
        help="use only the first N prompts (default: all)",
    )
    parser.add_argument(
        "--method",
        default="best-of-n",
        choices=["best-of-n", "steer", "both"],
        help="how rejected continuations are made (default: %(default)s)",
    )
    parser.add_argument(
        "--samples", type=positive_count, default=4, help="best-of-n samples per prompt (default: %(default)s)"
    )
    parser.add_argument("--probe", default=None, help="probe file for --method steer/both")
    parser.add_argument(
        "--steer-samples", type=positive_count, default=2, help="steered samples per prompt (default: %(default)s)"
    )
    parser.add_argument(
        "--steer-strength",
        type=float,
        default=0.5,
        help="step along the probe, in units of the mean residual norm (default: %(default)s)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--top-k", type=non_negative, default=50, help="0 = no top-k filter (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=0.3, help="min rejected - chosen score (default: %(default)s)")
    add_options(parser, ScorerSettings(), names=("scorer",))
    parser.add_argument("--candidates-out", type=output_file, default=None, help="also save all scored candidates here")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_options(parser, DeviceSettings())
    parser.add_argument(
        "-o", "--output", type=output_file, default="pairs.jsonl", help="pairs JSONL to write (default: %(default)s)"
    )


def run(args) -> int:
    from neuron_explorer.engine.alignment import pairs as P
    from neuron_explorer.engine.measure.prompts import load_prompts
    from neuron_explorer.engine.measure.scoring import get_scorer
    from neuron_explorer.engine.model.loading import load_model
    from neuron_explorer.errors import UserError

    if args.method in {"steer", "both"} and not args.probe:
        raise UserError(f"--method {args.method} steers along a probe: pass --probe FILE (train one with train-probe)")
    scorer = get_scorer(args.scorer)
    prompts = load_prompts(args.prompts, column=args.prompt_column, max_prompts=args.max_prompts)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    n_samples = args.samples if args.method in {"best-of-n", "both"} else 0
    candidates = P.generate_candidates(
        loaded,
        prompts.texts,
        scorer,
        n_samples=n_samples,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        progress=lambda what, n: print(f"{what}: {n} continuations"),
    )
    if args.method in {"steer", "both"}:
        from neuron_explorer.engine.measure.probe import load_probe

        probe = load_probe(args.probe, loaded.d_model)
        P.add_steered(
            loaded,
            candidates,
            scorer,
            probe.direction,
            n_samples=args.steer_samples,
            strength=args.steer_strength,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed + 1,
        )
    sources = {"best-of-n": ("samples",), "steer": ("steered",), "both": ("samples", "steered")}[args.method]
    pairs = P.select_pairs(candidates, margin=args.margin, sources=sources)
    provenance = {
        "model": loaded.description,
        "prompts": prompts.provenance(),
        "scorer": scorer.describe(),
        "method": args.method,
        "margin": args.margin,
        "samples": n_samples,
        "seed": args.seed,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "probe": args.probe,
        "steer_strength": args.steer_strength,
        "chosen": "base greedy continuation",
    }
    if args.candidates_out:
        P.save_candidates(candidates, args.candidates_out, provenance)
    if not pairs:
        raise UserError(
            f"no pair passed the margin {args.margin}: lower --margin, sample more, or use provocative prompts"
        )
    P.save_pairs(pairs, args.output, provenance)
    print(f"{len(pairs)} pairs from {len(prompts.texts)} prompts -> {args.output}")
    return 0
