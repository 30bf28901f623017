"""Train the linear toxicity probe: logistic regression on the model's last-block residual stream, mean-pooled
over real tokens (padding masked). Reports held-out accuracy and AUC and saves the probe (`weight` (d,), `bias`)
as .safetensors with its metadata (model, layer, data hash, metrics) in the header and in a .json beside it.

Labelled data: --data FILE (.csv/.parquet/.jsonl in the Jigsaw layout: comment_text + toxic; other names with
--text-column/--label-column) or hub:NAME[:SPLIT]. Without --data it works offline: the model's own sampled
continuations of the provocative prompts, labelled by the offline scorer (score >= 0.8 toxic, <= 0.2 non-toxic,
the ambiguous ones in between left out; see --band), or reuse --candidates from make-pairs.
"""

from __future__ import annotations

from neuron_explorer.commands.arguments import output_file, readable_file
from neuron_explorer.engine.defaults import LABEL_BAND, PROBE_C
from neuron_explorer.spec.settings import DeviceSettings, ScorerSettings, add_options, positive_count

HELP = "train the linear toxicity probe (Jigsaw-layout data, or offline self-labelled continuations)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="embedded", help="model spec (default: %(default)s)")
    parser.add_argument("--data", default=None, help="labelled texts: a file or hub:NAME[:SPLIT] (default: offline)")
    parser.add_argument("--text-column", default=None, help="text column (default: comment_text or text)")
    parser.add_argument("--label-column", default=None, help="label column (default: toxic or label)")
    parser.add_argument("--max-rows", type=positive_count, default=None, help="random subset of the labelled data")
    parser.add_argument(
        "--candidates", type=readable_file, default=None, help="reuse a candidates.jsonl (offline mode)"
    )
    parser.add_argument(
        "--prompts", default="builtin:pairs", help="prompts to sample from (offline mode) (default: %(default)s)"
    )
    parser.add_argument(
        "--samples", type=positive_count, default=4, help="samples per prompt (offline mode, default: %(default)s)"
    )
    add_options(parser, ScorerSettings(), names=("scorer",), notes={"scorer": "; labels the texts in offline mode"})
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="score/label threshold for toxic (default: %(default)s)"
    )
    parser.add_argument(
        "--band",
        type=float,
        default=LABEL_BAND,
        help="offline mode: leave out texts scored within threshold ± band (default: %(default)s)",
    )
    parser.add_argument(
        "--heldout-fraction", type=float, default=0.2, help="held-out share of the texts (default: %(default)s)"
    )
    parser.add_argument(
        "--C", type=float, default=PROBE_C, help="inverse L2 strength on standardized features (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_options(parser, DeviceSettings())
    parser.add_argument(
        "-o", "--output", type=output_file, default="probe.safetensors", help="probe file (default: %(default)s)"
    )


def run(args) -> int:
    from neuron_explorer.engine.alignment import probe_training as T
    from neuron_explorer.engine.model.loading import load_model
    from neuron_explorer.errors import UserError

    if not 0 < args.heldout_fraction < 1:
        raise UserError("--heldout-fraction must be between 0 and 1")
    if args.output.suffix != ".safetensors":
        raise UserError(f"-o {args.output}: the probe is saved as .safetensors")
    if args.data:
        labeled = T.load_labeled(
            args.data,
            text_column=args.text_column,
            label_column=args.label_column,
            max_rows=args.max_rows,
            seed=args.seed,
        )
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        label_desc = f"{args.data} labels >= {args.threshold}"
    else:
        from neuron_explorer.engine.alignment.pairs import generate_candidates, load_candidates
        from neuron_explorer.engine.measure.prompts import load_prompts
        from neuron_explorer.engine.measure.scoring import get_scorer

        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        if args.candidates:
            candidates = load_candidates(args.candidates)
            source = str(args.candidates)
        else:
            scorer = get_scorer(args.scorer)
            prompts = load_prompts(args.prompts)
            print(f"sampling {args.samples} continuations of {len(prompts.texts)} prompts ...")
            candidates = generate_candidates(loaded, prompts.texts, scorer, n_samples=args.samples, seed=args.seed)
            source = f"{args.prompts} continuations by {args.model}"
        labeled = T.labeled_from_candidates(candidates, args.threshold, source=source, band=args.band)
        label_desc = T.label_rule(args.scorer, args.threshold, args.band)
    print(f"{len(labeled.texts)} texts, {int(labeled.labels.sum())} toxic; extracting features ...")
    features = T.pooled_features(loaded, labeled.texts)
    fit = T.fit_probe(
        features, labeled.labels, groups=labeled.groups, test_fraction=args.heldout_fraction, seed=args.seed, C=args.C
    )
    path = T.save_probe(
        fit,
        args.output,
        {
            "model": loaded.description,
            "layer": "last block output (pre final norm)",
            "pooling": "mean over real tokens",
            "data": labeled.provenance(),
            "labels": label_desc,
        },
    )
    m = fit.metrics
    print(
        f"held-out accuracy {m['heldout_accuracy']:.3f}, AUC {m['heldout_auc']:.3f} ({m['n_heldout']} texts, split "
        f"{m['heldout_split']}; "
        f"train accuracy {m['train_accuracy']:.3f} on {m['n_train']})\nprobe: {path}"
    )
    return 0
