"""A stand-in for `python -m neuron_explorer patch FILE ... --progress-json` in the explorer's tests: it reports the
same job events (`neuron_explorer.events`) in well under a second (no model), and behaves by its --label:
  ...fail...   reports a failure and exits 2
  ...slow...   reports progress for ~20 s (to be cancelled)
  otherwise    stores one run beside FILE (through the real writer) and reports done
With --preset paper it stores the papers' seven rows (FAKE_PRESET below) against one stored baseline, with one
progress count over all of them, as the real command does.
"""

import sys
import time

from neuron_explorer.cache import annotations
from neuron_explorer.events import Done, Failed, Message, Progress, Stored, to_json

# The baseline and the preset's rows (label, toxicity, its s.e.) that the tests check the Runs screen against.
FAKE_BASELINE_KEY = "fakebaseline0001"
FAKE_BASE = {
    "toxicity": 0.30,
    "toxicity_sem": 0.02,
    "perplexity": 20.0,
    "f1": 0.2,
    "n_prompts": 4,
    "probe_projection": 1.0,
}
FAKE_DPO = {
    "toxicity": 0.10,
    "toxicity_sem": 0.015,
    "perplexity": 21.0,
    "f1": 0.2,
    "n_prompts": 4,
    "probe_projection": 0.5,
}
FAKE_PRESET = [
    ("ablate top-128 toxic", 0.29, 0.02),
    ("patch TP↓", 0.27, 0.02),
    ("patch TN↓", 0.28, 0.021),
    ("patch AP↓", 0.26, 0.019),
    ("patch AN↓", 0.285, 0.02),
    ("patch all four ↓ groups", 0.14, 0.016),
    ("tuning-free edit (α=1, β=1)", 0.2, 0.018),
]


def report(event):
    print(to_json(event), flush=True)


def main(args: list[str]) -> None:
    cache = args[0]
    label = args[args.index("--label") + 1] if "--label" in args else "run"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    mode = args[args.index("--mode") + 1]
    print("a library's chatter on stdout, not an event", flush=True)
    report(Message("loading the base model"))
    if "--preset" in args:
        preset(cache, mode)
        return
    steps = 100 if "slow" in label else 4
    for step in range(1, steps + 1):
        time.sleep(0.2 if "slow" in label else 0.02)
        report(Progress(f"{label}: toxicity", step, steps, elapsed=step, eta=steps - step))
        if "fail" in label and step == 2:
            report(Failed("the model ran out of patience: try again"))
            sys.exit(2)
    run = annotations.save_run(
        cache,
        {"label": label, "mode": mode, "sets": sets, "positions": "all"},
        {
            "toxicity": 0.25,
            "recovered": 0.5,
            "perplexity": 20.0,
            "f1": 0.2,
            "neurons": 7,
            "probe_change": -0.1,
            "n_prompts": 4,
        },
        [{"prompt": "You are", "base": "a bad word", "patched": "a word", "dpo": "kind"}],
        label=label,
    )
    report(Stored("run", run.run_id, label=label, metrics=run.metrics))
    report(Done())


def preset(cache: str, mode: str) -> None:
    annotations.save_baseline(cache, FAKE_BASELINE_KEY, {"key": FAKE_BASELINE_KEY, "base": FAKE_BASE, "dpo": FAKE_DPO})
    units, total, done = 4, 4 * (2 + len(FAKE_PRESET)), 0
    for stage in ("base", "dpo"):
        done += units
        report(Progress(f"{stage}: toxicity", done, total, elapsed=done, eta=total - done))
    gap = FAKE_BASE["toxicity"] - FAKE_DPO["toxicity"]
    if time.time() % 1 > 0.5:  # every run within one second: their order (by creation time, then id) is fixed
        time.sleep(1 - time.time() % 1)
    for label, toxicity, sem in FAKE_PRESET:
        done += units
        report(Progress(f"{label}: toxicity", done, total, elapsed=done, eta=total - done))
        metrics = {
            "toxicity": toxicity,
            "toxicity_sem": sem,
            "recovered": (FAKE_BASE["toxicity"] - toxicity) / gap,
            "perplexity": 20.5,
            "f1": 0.2,
            "neurons": 128,
            "probe_change": -0.1,
            "n_prompts": 4,
        }
        run = annotations.save_run(
            cache,
            {"label": label, "mode": mode, "sets": [], "positions": "newest", "baseline": FAKE_BASELINE_KEY},
            metrics,
            [],
            label=label,
        )
        report(Stored("run", run.run_id, label=label, metrics=run.metrics))
    report(Done())


if __name__ == "__main__":
    main(sys.argv[1:])
