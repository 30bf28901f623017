"""Choose DPO settings on validation data, never on the held-out prompts.

Trains DPO on the build's pairs (run `neuron-explorer build --until pairs` first) and, every `--every` steps (or
at the `--at` steps), measures the policy's toxicity on validation prompts (default: the 399 real RealToxicityPrompts
challenge prompts of `builtin:rtp-validation`, which no training data near-copies) by the scorer and the check
scorer, and its perplexity on corpus windows disjoint from the evaluation's. One JSON line per measurement goes to
stdout. The embedded default's DPO settings were chosen this way (docs/alignment.md).

    python bench/dpo_validation_sweep.py --steps 160 --at 80,120,160
"""

from __future__ import annotations

import argparse
import json
import time

from transformers import AutoTokenizer, TrainerCallback

from neuron_explorer.engine.alignment.dpo import DPOSettings, train_dpo
from neuron_explorer.engine.defaults import default_work_dir
from neuron_explorer.engine.measure.corpora import load_corpus, perplexity_windows
from neuron_explorer.engine.measure.evaluation import perplexity, toxicity
from neuron_explorer.engine.measure.prompts import RTP_VALIDATION, load_prompts
from neuron_explorer.engine.measure.scoring import get_scorer
from neuron_explorer.engine.model.architectures import architecture_for
from neuron_explorer.engine.model.loading import LoadedModel, embedded_base_dir
from neuron_explorer.spec.settings import CHECK_SCORER, SCORER, DPOTraining, EvaluationSettings

EVALUATION_WINDOWS = 24  # the build's perplexity windows, which the sweep must not use


def validation_windows(tokenizer, window: int = 256, n: int = 12) -> list[list[int]]:
    corpus = load_corpus()
    used = {tuple(w) for w in perplexity_windows(tokenizer, corpus, window, EVALUATION_WINDOWS)}
    others = [w for w in perplexity_windows(tokenizer, corpus, window, None) if tuple(w) not in used]
    return others[5::30][:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--at", default=None, help="measure at these steps instead (comma-separated)")
    parser.add_argument("--lr", type=float, default=DPOTraining.learning_rate)
    parser.add_argument("--beta", type=float, default=DPOTraining.beta)
    parser.add_argument("--freeze-embeddings", action="store_true", help="train every weight but the embeddings")
    parser.add_argument("--model", default=None, help="policy folder (default: the embedded base model)")
    parser.add_argument("--pairs", default=None, help="pairs JSONL (default: the build's)")
    parser.add_argument("--prompts", default=RTP_VALIDATION, help="validation prompts (default: %(default)s)")
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--window", type=int, default=256, help="tokens per perplexity window")
    parser.add_argument("--windows", type=int, default=12, help="perplexity windows")
    parser.add_argument("--work-dir", default="/tmp/neuron-explorer-dpo-sweep")
    args = parser.parse_args(argv)
    steps = (
        {int(step) for step in args.at.split(",")} if args.at else set(range(args.every, args.steps + 1, args.every))
    )

    policy = args.model or str(embedded_base_dir())
    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompts = load_prompts(args.prompts, max_prompts=args.max_prompts).texts
    scorers = [get_scorer(SCORER), get_scorer(CHECK_SCORER)]
    windows = validation_windows(tokenizer, args.window, args.windows)

    def measure(model, step: int) -> None:
        loaded = LoadedModel(
            model=model, tokenizer=tokenizer, arch=architecture_for(model.config.model_type), spec="policy", folder=None
        )
        training = model.training
        model.eval()
        started = time.perf_counter()
        _, (scores, check) = toxicity(loaded, prompts, scorers, EvaluationSettings())
        ppl, _ = perplexity(loaded, windows)
        print(
            json.dumps(
                {
                    "step": step,
                    "toxicity": float(scores.mean()),
                    "check_toxicity": float(check.mean()),
                    "perplexity": ppl,
                    "n_prompts": len(prompts),
                    "prompts": args.prompts,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )
        model.train(training)

    class Measure(TrainerCallback):
        def on_train_begin(self, args_, state, control, model=None, **kwargs):
            if args.freeze_embeddings:  # no gradient, so the optimizer leaves them as they are
                model.get_input_embeddings().weight.requires_grad_(False)
                model.get_output_embeddings().weight.requires_grad_(False)
            measure(model, 0)

        def on_step_end(self, args_, state, control, model=None, **kwargs):
            if state.global_step in steps:
                measure(model, state.global_step)

    settings = DPOSettings(
        policy=policy,
        pairs=args.pairs or str(default_work_dir() / "pairs" / "pairs.jsonl"),
        output=f"{args.work_dir}/model",
        work_dir=args.work_dir,
        device="cpu",
        training=DPOTraining(
            learning_rate=args.lr,
            beta=args.beta,
            max_steps=args.steps,
            eval_steps=args.steps + 1,
            save_steps=args.steps + 1,
            patience=0,
        ),
    )
    train_dpo(settings, resume=False, callbacks=[Measure()], printer=lambda line: None)


if __name__ == "__main__":
    main()
