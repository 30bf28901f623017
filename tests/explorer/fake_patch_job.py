"""A stand-in for `python -m neuron_explorer patch FILE ... --progress-json` in the explorer's tests: it speaks the
same JSON-lines protocol in well under a second (no model), and behaves by its --label:
  ...fail...   reports an error and exits 2
  ...slow...   reports progress for ~20 s (to be cancelled)
  otherwise    stores one run beside FILE (through the real writer) and reports done
"""

import json
import sys
import time

from neuron_explorer.cache import annotations

args = sys.argv[1:]
cache = args[0]
label = args[args.index("--label") + 1] if "--label" in args else "run"
sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
mode = args[args.index("--mode") + 1]


def emit(event):
    print(json.dumps(event), flush=True)


emit({"event": "message", "text": "loading the base model"})
steps = 100 if "slow" in label else 4
for step in range(1, steps + 1):
    time.sleep(0.2 if "slow" in label else 0.02)
    emit({"event": "progress", "stage": f"{label}: toxicity", "done": step, "total": steps, "elapsed": step,
          "eta": steps - step})
    if "fail" in label and step == 2:
        emit({"event": "error", "message": "the model ran out of patience: try again"})
        sys.exit(2)
run = annotations.save_run(cache, {"label": label, "mode": mode, "sets": sets, "positions": "all"},
                           {"toxicity": 0.25, "recovered": 0.5, "perplexity": 20.0, "f1": 0.2, "neurons": 7,
                            "probe_change": -0.1, "n_prompts": 4},
                           [{"prompt": "You are", "base": "a bad word", "patched": "a word", "dpo": "kind"}],
                           label=label)
emit({"event": "run", "run_id": run.run_id, "label": label, "metrics": run.metrics})
emit({"event": "done", "run_ids": [run.run_id]})
