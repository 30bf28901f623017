"""The prompt lab's wire format, torch-free so that the explorer can import it.

The model worker (`neuron-explorer lab FILE --serve`) reads one JSON object per line on stdin:

  {"request": "run", "id": 3, "prompt": "...", "intervention": INTERVENTION, "top": 50, "full": false}
                                      INTERVENTION: null (no patched run) or `spec.intervention.Intervention`'s
                                      JSON: {"mode": MODE, "sets": ["group:TP↓"], "positions": "all",
                                      "params": {"alpha": 1.0}, "label": null} (MODE: a name of the patch-mode
                                      registry)
  {"request": "tokens", "id": 4, "neurons": [[LAYER, NEURON], ...]}
                                      the value-vector tokens of neurons `compute` left out (its `lens_rule`):
                                      the answer's result is described in `TOKENS_FIELDS`
  {"request": "examples", "id": 5, "layer": 12, "neuron": 345, "prompts": [0, 7, ...]}
                                      one neuron's activation at every token of some of the cache's statistics
                                      prompts (their indices) and each model's continuation: described in
                                      `EXAMPLES_FIELDS`
  {"request": "cancel", "id": 3}      stop request 3 if it is still running (it ends with a `cancelled` event)
  {"request": "quit"}                 (end of input quits too)

and writes job events (`neuron_explorer.events`), one per line on stdout: `progress` while it loads the models and
while it answers, `ready` once the models are loaded, then per request either `answer` (its `result` is
`LabResult.to_dict()`, described in `RESULT_FIELDS`), `failed` (a bad request: the worker goes on) or `cancelled`.
A worker that cannot start (a missing model, a foreign cache) reports `failed` and exits non-zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from neuron_explorer.errors import UserError
from neuron_explorer.events import json_object
from neuron_explorer.spec.intervention import Intervention

DEFAULT_TOP = 50  # neurons by Δ and by |δ| each (their union is the result's neuron table)
# The per-prompt columns of a result's `neurons` table (beside layer, neuron and act_patched); the explorer puts them
# in place of the cache's columns of the same names.
PROMPT_NEURON_COLUMNS = (
    "act_pre",
    "act_dpo",
    "act_shift",
    "tox_pre",
    "tox_dpo",
    "contribution",
    "activation_term",
    "weight_term",
)

# What `LabResult.to_dict()` holds (the `answer` event's `result` and the `--json` file):
RESULT_FIELDS = {
    "id": "the request's id",
    "prompt": "the prompt as given",
    "prompt_tokens": "the prompt's tokens after truncation to the cache's max_prompt_tokens",
    "truncated": "whether the prompt was cut",
    "protocol": "the cache's positions, new_tokens, max_prompt_tokens and shared_continuation",
    "models": "the base and tuned model specs the worker loaded",
    "scorer": "the toxicity scorer",
    "intervention": (
        "null, or the patched run's intervention (mode, sets, positions, label) with every parameter's "
        "value in params, and neurons (and, for subtract, alpha_fitted_on: where its α was measured)"
    ),
    "runs": "base, dpo and (with an intervention) patched: continuation, tokens (generated, one string each), "
    "toxicity, and lens: residual and mlp, each n_layers × T projections on the probe direction (T: the "
    "prompt's tokens, then the generated tokens each model read)",
    "neurons": f"columns layer, neuron, {', '.join(PROMPT_NEURON_COLUMNS)} (and act_patched) "
    "of the union of the top neurons by Δ and by |δ| on this prompt",
    "layer_contribution": "this prompt's Σ Δ per layer",
    "totals": "this prompt's Σ of positive Δ, of negative Δ, and net",
    "full": "with full=true only: act_pre and act_dpo of every neuron (n_layers × d_mlp)",
    "seconds": "time per stage",
}


# What a tokens request's `answer` holds:
TOKENS_FIELDS = {
    "id": "the request's id",
    "neurons": "the [layer, neuron] pairs as asked",
    "base": "top_tokens, top_scores, bottom_tokens, bottom_scores: one list of k per neuron (tokens as strings), "
    "the value vector through the base model's final norm and unembedding, as `compute` stores them",
    "dpo": "the same for the tuned model",
}
MAX_TOKENS_NEURONS = 1024  # neurons one tokens request may ask for (a screenful is a few dozen)

# What an examples request's `answer` holds:
EXAMPLES_FIELDS = {
    "id": "the request's id",
    "layer": "the neuron's layer",
    "neuron": "its index in the layer",
    "positions": "the cache's recorded positions (its protocol)",
    "examples": "one per prompt asked for, in order: prompt (its index), text, and base and dpo, each with tokens "
    "(the truncated prompt's tokens, then the continuation's, as strings), prompt_length, acts (the neuron's "
    "activation at every token, read in one pass over prompt + continuation), read (whether the protocol averages "
    "that position), mean (of acts over the read positions), recorded (the same prompt's ā from the recorder that "
    "wrote the cache, run now) and stored (the cache's ā for that prompt)",
    "tokens": "base and dpo: the neuron's top_tokens, top_scores, bottom_tokens, bottom_scores (k each, tokens as "
    "strings), as a tokens request answers them: for a neuron whose tokens `compute` left out",
}
MAX_EXAMPLE_PROMPTS = 32  # prompts one examples request may ask for (the detail screen asks for 8)


def lens_difference(base, dpo) -> np.ndarray:
    """base − DPO of two runs' lens (n_layers × T each) over the positions both read (by index: after the
    continuations part, the two models read different tokens there)."""
    base, dpo = np.asarray(base, dtype=np.float64), np.asarray(dpo, dtype=np.float64)
    common = min(base.shape[1], dpo.shape[1])
    return base[:, :common] - dpo[:, :common]


def layer_bins(n_layers: int, count: int) -> list[np.ndarray]:
    """The layers each shown row (or column) of a lens averages: one each when they fit, else `count` contiguous
    bins of nearly equal size (the Lab screen's heat map and the command's table)."""
    return np.array_split(np.arange(n_layers), min(n_layers, max(count, 1)))


@dataclass(frozen=True)
class RunRequest:
    """One prompt and, optionally, the intervention of its patched run (any that `patch` accepts)."""

    id: int
    prompt: str
    intervention: Intervention | None = None  # None: no patched run
    top: int = DEFAULT_TOP
    full: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "request": "run",
                "id": self.id,
                "prompt": self.prompt,
                "intervention": None if self.intervention is None else self.intervention.to_dict(),
                "top": self.top,
                "full": self.full,
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class TokensRequest:
    """The value-vector tokens of a few neurons, computed by the worker (the cache holds only some: `lens_rule`)."""

    id: int
    neurons: tuple[tuple[int, int], ...]

    def to_json(self) -> str:
        return json.dumps({"request": "tokens", "id": self.id, "neurons": [list(pair) for pair in self.neurons]})


@dataclass(frozen=True)
class ExamplesRequest:
    """One neuron's per-token activations on some of the cache's statistics prompts, in both models."""

    id: int
    layer: int
    neuron: int
    prompts: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "request": "examples",
                "id": self.id,
                "layer": self.layer,
                "neuron": self.neuron,
                "prompts": list(self.prompts),
            }
        )


@dataclass(frozen=True)
class CancelRequest:
    id: int

    def to_json(self) -> str:
        return json.dumps({"request": "cancel", "id": self.id})


@dataclass(frozen=True)
class QuitRequest:
    def to_json(self) -> str:
        return json.dumps({"request": "quit"})


class BadRequest(UserError):
    """A request whose id could be read but not the rest: the failure is reported as that request's."""

    def __init__(self, message: str, request: int):
        super().__init__(message)
        self.request = request


Request = RunRequest | TokensRequest | ExamplesRequest | CancelRequest | QuitRequest
Work = (RunRequest, TokensRequest, ExamplesRequest)  # the requests the worker answers one at a time, in order


def parse_request(line: str) -> Request:
    """The request a line holds, or a one-line UserError that says what is wrong with it."""
    shown = line.strip()[:120]
    payload = json_object(line, "a lab request", UserError, shown)
    kind = payload.pop("request", None)
    if kind == "quit":
        return QuitRequest()
    if kind not in ("run", "tokens", "examples", "cancel"):
        raise UserError(f"unknown lab request {kind!r} (known: run, tokens, examples, cancel, quit): {shown!r}")
    if not isinstance(payload.get("id"), int):
        raise UserError(f"a {kind} request needs an integer id: {shown!r}")
    if kind == "cancel":
        return CancelRequest(payload["id"])
    if kind == "tokens":
        return _tokens_request(payload, shown)
    if kind == "examples":
        return _examples_request(payload, shown)
    known = set(RunRequest.__dataclass_fields__)
    unknown = sorted(set(payload) - known)
    if unknown:
        raise UserError(f"a run request takes no {', '.join(unknown)} (it takes {', '.join(sorted(known))})")
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("a run request needs a non-empty prompt")
    top = payload.get("top", DEFAULT_TOP)
    if not isinstance(top, int) or top < 1:
        raise UserError(f"top must be a positive integer, not {top!r}")
    given = payload.get("intervention")
    try:
        intervention = None if given is None else Intervention.from_dict(given)
    except UserError as error:
        raise BadRequest(str(error), payload["id"]) from None
    return RunRequest(
        id=payload["id"], prompt=prompt, intervention=intervention, top=top, full=bool(payload.get("full", False))
    )


def _tokens_request(payload: dict, shown: str) -> TokensRequest:
    neurons = payload.get("neurons")
    pairs = neurons if isinstance(neurons, list) else []
    if not pairs or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(value, int) and value >= 0 for value in pair)
        for pair in pairs
    ):
        raise UserError(f"a tokens request needs neurons as a non-empty list of [layer, neuron] pairs: {shown!r}")
    if len(pairs) > MAX_TOKENS_NEURONS:
        raise UserError(f"a tokens request takes at most {MAX_TOKENS_NEURONS} neurons, not {len(pairs)}")
    unknown = sorted(set(payload) - {"id", "neurons"})
    if unknown:
        raise UserError(f"a tokens request takes no {', '.join(unknown)} (it takes id, neurons)")
    return TokensRequest(id=payload["id"], neurons=tuple((layer, neuron) for layer, neuron in pairs))


def _examples_request(payload: dict, shown: str) -> ExamplesRequest:
    unknown = sorted(set(payload) - set(ExamplesRequest.__dataclass_fields__))
    if unknown:
        raise UserError(f"an examples request takes no {', '.join(unknown)} (it takes id, layer, neuron, prompts)")
    layer, neuron, prompts = payload.get("layer"), payload.get("neuron"), payload.get("prompts")
    if not (isinstance(layer, int) and isinstance(neuron, int) and layer >= 0 and neuron >= 0):
        raise UserError(f"an examples request needs a layer and a neuron, whole numbers of at least 0: {shown!r}")
    if (
        not isinstance(prompts, list)
        or not prompts
        or not all(isinstance(value, int) and value >= 0 for value in prompts)
    ):
        raise UserError(f"an examples request needs prompts as a non-empty list of prompt indices: {shown!r}")
    if len(prompts) > MAX_EXAMPLE_PROMPTS:
        raise UserError(f"an examples request takes at most {MAX_EXAMPLE_PROMPTS} prompts, not {len(prompts)}")
    return ExamplesRequest(id=payload["id"], layer=layer, neuron=neuron, prompts=tuple(prompts))
