"""Patch-run benchmark: what the intervention hooks cost next to the same evaluation without hooks.

On the embedded base model (SmolLM2-135M-Instruct) and the same prompts, perplexity windows and F1 passages,
it times, interleaved and repeated (the machine is shared, so ratios are taken side by side, best of --repeats):

  plain      `evaluation.evaluate`: the model as it is, no hooks at all
  measure    the run's own evaluation (`PatchSession.measure`) with no intervention: the same work as a run but
             the intervention hooks (`evaluate` also re-tokenizes the corpus on every call, which the session
             does once, so this row isolates what the hooks cost)
  run:MODE   the patch run's own evaluation (`PatchSession.measure`, which also measures the last-layer probe
             projection) under each intervention, acting at every position, perplexity included

and prints each run's best time over plain's and over measure's best time. Target: ≤ 1.2 for every mode.

Neuron statistics come from the default cache when it exists (the real groups), else from a synthetic cache of the
embedded model's shape (random groups of the same sizes as a real model's).

  python bench/patch_bench.py [--cache FILE] [--prompts 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from neuron_explorer.engine.defaults import default_cache_path
from neuron_explorer.engine.measure.corpora import load_corpus
from neuron_explorer.engine.measure.evaluation import evaluate
from neuron_explorer.engine.measure.prompts import load_prompts
from neuron_explorer.engine.measure.scoring import get_scorer
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.engine.patching.interventions import hook_count
from neuron_explorer.engine.patching.runs import PatchSession
from neuron_explorer.spec.intervention import Intervention
from neuron_explorer.spec.settings import RUN_EVALUATION, EvaluationSettings, RunSettings

SPECS = [
    Intervention("patch-mean", ("group:reducing",), label="patch all four ↓ groups"),
    Intervention("zero-ablate", ("toxic:128",), label="ablate top-128 toxic"),
    Intervention("shift", ("all",), label="shift every neuron"),
    Intervention("tuning-free", (), label="tuning-free edit"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--ppl-windows", type=int, default=4)
    parser.add_argument("--f1-items", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cache = args.cache or default_cache_path()
    loaded = load_model("embedded", device="cpu", dtype="float32")
    if not Path(cache).exists():
        from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

        arch = loaded.arch
        folder = Path(tempfile.gettempdir()) / "neuron-explorer-patch-bench"
        folder.mkdir(exist_ok=True)
        cache = folder / "synthetic-smollm2.h5"
        if not cache.exists():
            build_synthetic_cache(
                cache,
                n_layers=arch.n_layers(loaded.model),
                d_mlp=arch.d_mlp(loaded.model),
                d_model=loaded.d_model,
                n_prompts=16,
                cluster_top_k=200,
            )
        print(f"(no default cache: using the synthetic statistics in {cache})")
    settings = RunSettings(
        prompts="builtin:heldout",
        max_prompts=args.prompts,
        base="embedded",
        tuned="embedded",
        evaluation=replace(RUN_EVALUATION, ppl_windows=args.ppl_windows, f1_items=args.f1_items),
    )
    session = PatchSession(cache, settings, loaded=loaded)
    prompts = load_prompts("builtin:heldout", max_prompts=args.prompts).texts
    scorer, corpus = get_scorer("profanity"), load_corpus("builtin")
    eval_settings = EvaluationSettings(ppl_window=256, ppl_windows=args.ppl_windows, f1_items=args.f1_items)
    interventions = [(spec.name(), session.intervention(spec)[0]) for spec in SPECS]

    def plain() -> None:
        evaluate(loaded, prompts, scorer, corpus=corpus, settings=eval_settings)

    def patched(intervention) -> None:
        session.measure(loaded, "bench", intervention)

    def measure_only() -> None:
        session.measure(loaded, "bench")

    jobs = [("plain", plain), ("measure", measure_only)] + [(name, lambda i=i: patched(i)) for name, i in interventions]
    plain()  # warm-up: first calls allocate
    times: dict[str, list[float]] = {name: [] for name, _ in jobs}
    for repeat in range(args.repeats):
        order = jobs if repeat % 2 == 0 else jobs[::-1]
        for name, job in order:
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
            assert hook_count(loaded) == 0
    best_plain, best_measure = min(times["plain"]), min(times["measure"])
    print(
        f"{args.prompts} prompts × 20 tokens, {args.ppl_windows} × 256-token perplexity windows, "
        f"{args.f1_items} F1 passages; best of {args.repeats}, interleaved; torch threads {torch.get_num_threads()}"
    )
    print(f"{'setting':<28} {'neurons':>8} {'best s':>8} {'median s':>9} {'/plain':>7} {'/measure':>9}  ok (≤ 1.2)")
    counts = {name: i.n_neurons for name, i in interventions}
    for name, values in times.items():
        best = min(values)
        median = sorted(values)[len(values) // 2]
        ratio, hooks = best / best_plain, best / best_measure
        ok = "" if name in ("plain", "measure") else ("yes" if max(ratio, hooks) <= 1.2 else "NO")
        print(f"{name:<28} {counts.get(name, 0):>8,} {best:>8.2f} {median:>9.2f} {ratio:>7.3f} {hooks:>9.3f}  {ok}")
    session.close()


if __name__ == "__main__":
    main()
