"""A stand-in for `python -m neuron_explorer lab FILE --serve` in the explorer's tests: the real wire format
(`engine.lab.protocol` requests on stdin, `neuron_explorer.events` on stdout), no model. Its answers are
deterministic, shaped like the real `result` (RESULT_FIELDS) and sized to FILE's layers and neurons; the intervention's
sets are resolved by the real neuron_sets code, so a spec the real worker would refuse is refused here too.

  --base missing      reports `failed` ("model 'missing' not found …") and exits 2 before `ready`
  a prompt with ...
    fail              `failed` for that request (the worker goes on)
    slow              progress for ~20 s, unless cancelled (then `cancelled`)
    crash             a line on stderr, then exit 1
"""

import argparse
import queue
import re
import sys
import threading
import time

import numpy as np

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.lab.protocol import CancelRequest, ExamplesRequest, QuitRequest, RunRequest, parse_request
from neuron_explorer.engine.patching.neuron_sets import resolve
from neuron_explorer.errors import UserError
from neuron_explorer.events import Answer, Cancelled, Failed, Progress, Ready, to_json

NEW_TOKENS = 6
CONTINUATIONS = {
    "base": [" idiot", " and", " a", " fool", ".", " Really"],
    "dpo": [" person", " who", " tries", " hard", ".", ""],
    "patched": [" person", " and", " a", " friend", ".", " Yes"],
}
TOXICITY = {"base": 0.91, "dpo": 0.12, "patched": 0.34}

parser = argparse.ArgumentParser()
parser.add_argument("cache")
parser.add_argument("--serve", action="store_true")
parser.add_argument("--base")
args = parser.parse_args()
cancelled: set[int] = set()
requests: queue.Queue = queue.Queue()


def report(event):
    print(to_json(event), flush=True)


def read_requests():
    """Reads stdin beside the answering loop, so a cancel reaches a request while it runs."""
    for line in sys.stdin:
        try:
            request = parse_request(line)
        except UserError as error:
            report(Failed(str(error)))
            continue
        if isinstance(request, CancelRequest):
            cancelled.add(request.id)
        else:
            requests.put(request)
    requests.put(QuitRequest())


def run(name: str, prompt_tokens: list[str], n_layers: int, shift: float) -> dict:
    """Lens values that differ by layer and token, lowered by ``shift`` more in later layers and later tokens."""
    tokens = CONTINUATIONS[name][: NEW_TOKENS - (1 if name == "dpo" else 0)]  # DPO stops one token early
    width = len(prompt_tokens) + len(tokens)
    layers, columns = np.meshgrid(np.arange(n_layers), np.arange(width), indexing="ij")
    grid = layers + columns
    lowered = shift * layers / max(n_layers - 1, 1) * columns / width
    lens = {
        "residual": np.round(np.sin(grid * 0.7) * (1 + grid / 10) - lowered, 4).tolist(),
        "mlp": np.round(np.cos(grid * 0.5) * 0.3 - lowered / 4, 4).tolist(),
    }
    return {"continuation": "".join(tokens), "tokens": tokens, "toxicity": TOXICITY[name], "lens": lens}


def answer(request: RunRequest, reader: CacheReader) -> dict:
    info = reader.info
    prompt_tokens = re.findall(r"\s*\S+", request.prompt)
    intervention, given = None, request.intervention
    if given is not None:
        selection = resolve(reader, list(given.sets))
        intervention = {
            **given.to_dict(),
            "neurons": len(selection),
            "label": f"{given.mode} {' '.join(given.sets)}"[:60],
        }
    runs = {name: run(name, prompt_tokens, info.n_layers, shift) for name, shift in (("base", 0.0), ("dpo", 2.0))}
    if intervention:
        runs["patched"] = run("patched", prompt_tokens, info.n_layers, 1.0)
    count = 12
    rows = np.arange(count)
    act_pre = np.round(0.3 - rows * 0.05, 4)
    act_dpo = np.round(act_pre - 0.02 * (rows % 3 - 1), 4)
    contribution = np.round((rows[::-1] - 4) * 0.01 + rows * 0.001, 5)  # distinct, mixed signs, not sorted by Δ
    neurons = {
        "layer": (rows % info.n_layers).tolist(),
        "neuron": (rows * 5 % info.d_mlp).tolist(),
        "act_pre": act_pre.tolist(),
        "act_dpo": act_dpo.tolist(),
        "act_shift": (act_pre - act_dpo).tolist(),
        "tox_pre": (act_pre * 0.1).tolist(),
        "tox_dpo": (act_dpo * 0.1).tolist(),
        "contribution": contribution.tolist(),
        "activation_term": contribution.tolist(),
        "weight_term": [0.0] * count,
    }
    if intervention:
        neurons["act_patched"] = act_dpo.tolist()
    positive = float(contribution[contribution > 0].sum())
    negative = float(contribution[contribution < 0].sum())
    return {
        "id": request.id,
        "prompt": request.prompt,
        "prompt_tokens": prompt_tokens,
        "truncated": False,
        "protocol": {
            "positions": "generated",
            "new_tokens": NEW_TOKENS,
            "max_prompt_tokens": 32,
            "shared_continuation": False,
        },
        "models": {"base": "fake-base", "tuned": "fake-dpo"},
        "scorer": "fake",
        "intervention": intervention,
        "runs": runs,
        "neurons": neurons,
        "layer_contribution": [round(0.01 * layer, 4) for layer in range(info.n_layers)],
        "totals": {"sum_positive": positive, "sum_negative": negative, "net": positive + negative},
        "seconds": {"base": 0.01, "dpo": 0.01, "patched": 0.01 if intervention else 0.0, "total": 0.03},
    }


def examples(request: ExamplesRequest, reader: CacheReader) -> dict:
    """Per-token activations that rise along each continuation (the DPO's lower), read at the generated tokens."""
    texts = reader.prompt_texts()
    if max(request.prompts) >= len(texts):
        raise UserError(f"no prompt {max(request.prompts)}: the cache has {len(texts)} statistics prompts")
    found = []
    for index in request.prompts:
        prompt_tokens = re.findall(r"\s*\S+", texts[index])
        rows = {}
        for name, scale in (("base", 1.0), ("dpo", 0.25)):
            tokens = prompt_tokens + CONTINUATIONS[name]
            acts = [round(scale * (position - len(prompt_tokens)) / 4, 4) for position in range(len(tokens))]
            read = [position >= len(prompt_tokens) for position in range(len(tokens))]
            mean = float(np.mean([act for act, chosen in zip(acts, read) if chosen]))
            rows[name] = {
                "tokens": tokens,
                "prompt_length": len(prompt_tokens),
                "acts": acts,
                "read": read,
                "mean": mean,
                "recorded": mean,
                "stored": mean,
            }
        found.append({"prompt": index, "text": texts[index], **rows})
    layer, neuron = request.layer, request.neuron
    tokens = {
        model: {
            "top_tokens": [f" {model}-up{rank}" for rank in range(3)],
            "top_scores": [3.0 - rank for rank in range(3)],
            "bottom_tokens": [f" {model}-down{rank}" for rank in range(3)],
            "bottom_scores": [-3.0 + rank for rank in range(3)],
        }
        for model in ("base", "dpo")
    }
    return {
        "id": request.id,
        "layer": layer,
        "neuron": neuron,
        "positions": "generated",
        "examples": found,
        "tokens": tokens,
    }


def serve() -> int:
    print("a library's chatter on stdout, not an event", flush=True)
    if args.base == "missing":
        report(Failed("model 'missing' not found: pass --base with a Hugging Face id or a local folder"))
        return 2
    report(Progress("loading the base model", 1, 2))
    report(Progress("loading the tuned model", 2, 2))
    reader = CacheReader(args.cache)
    threading.Thread(target=read_requests, daemon=True).start()
    report(Ready("2 fake models loaded", 0.01))
    while not isinstance(request := requests.get(), QuitRequest):
        if isinstance(request, ExamplesRequest):
            try:
                report(Answer(request.id, examples(request, reader)))
            except UserError as error:
                report(Failed(str(error), request=request.id))
            continue
        if "crash" in request.prompt:
            print("RuntimeError: CUDA out of memory (fake)", file=sys.stderr, flush=True)
            return 1
        if "fail" in request.prompt:
            report(Failed(f"request {request.id}: the fake model refused this prompt"))
            continue
        steps = 200 if "slow" in request.prompt else 3
        for step in range(1, steps + 1):
            if request.id in cancelled:
                break
            report(Progress(("base", "dpo", "patched")[(step - 1) % 3], step, steps))
            time.sleep(0.1 if "slow" in request.prompt else 0.0)
        if request.id in cancelled:
            report(Cancelled())
            continue
        try:
            report(Answer(request.id, answer(request, reader)))
        except UserError as error:
            report(Failed(str(error)))
    return 0


sys.exit(serve())
