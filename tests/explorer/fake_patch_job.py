"""A stand-in for `python -m neuron_explorer patch FILE ... --progress-json` in the explorer's tests: it reports the
same job events (`neuron_explorer.events`) in well under a second (no model), and behaves by its --label:
  ...fail...   reports a failure and exits 2
  ...slow...   reports progress for ~20 s (to be cancelled)
  otherwise    stores one run beside FILE (through the real writer) and reports done
"""

import sys
import time

from neuron_explorer.cache import annotations
from neuron_explorer.events import Done, Failed, Message, Progress, Stored, to_json

args = sys.argv[1:]
cache = args[0]
label = args[args.index("--label") + 1] if "--label" in args else "run"
sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
mode = args[args.index("--mode") + 1]


def report(event):
    print(to_json(event), flush=True)


print("a library's chatter on stdout, not an event", flush=True)
report(Message("loading the base model"))
steps = 100 if "slow" in label else 4
for step in range(1, steps + 1):
    time.sleep(0.2 if "slow" in label else 0.02)
    report(Progress(f"{label}: toxicity", step, steps, elapsed=step, eta=steps - step))
    if "fail" in label and step == 2:
        report(Failed("the model ran out of patience: try again"))
        sys.exit(2)
run = annotations.save_run(cache, {"label": label, "mode": mode, "sets": sets, "positions": "all"},
                           {"toxicity": 0.25, "recovered": 0.5, "perplexity": 20.0, "f1": 0.2, "neurons": 7,
                            "probe_change": -0.1, "n_prompts": 4},
                           [{"prompt": "You are", "base": "a bad word", "patched": "a word", "dpo": "kind"}],
                           label=label)
report(Stored("run", run.run_id, label=label, metrics=run.metrics))
report(Done())
