"""Patch modes, one registry (as pyvene keeps one of its interventions): what each mode does, its parameters with
their defaults and checks, whether it needs a neuron set, and how it builds its intervention.

The command line takes its choices and help from here, `spec.intervention` checks an intervention against it,
`PatchSession` and `LabSession` dispatch through it and the explorer's patch dialog builds its fields from it.
Importing this module needs no torch: builders import the interventions when they run. A new mode is one `PatchMode`
entry below (and its intervention in interventions.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from neuron_explorer.errors import UserError

if TYPE_CHECKING:
    import numpy as np

# The toxic embedding (probe.SEED_WORDS list) whose value-vector cosines the tuning-free edit ranks neurons by.
TUNING_FREE_SEED_WORDS = "authors"


MAX_PARAMETER = (
    1e6  # the largest magnitude of a mode's number: 1e6 · an activation stays finite in float32 and bfloat16
)


@dataclass(frozen=True)
class Parameter:
    """A number a mode takes, given on the command line as --NAME and stored under NAME in the run record."""

    name: str
    help: str
    default: float | None  # None: the builder measures it (`default_help` says how)
    default_help: str = ""
    type: type = float
    check: Callable[[float], bool] = math.isfinite
    rule: str = "must be a finite number"

    def describe_default(self) -> str:
        return self.default_help if self.default is None else f"{self.default:g}"

    def validate(self, mode: str, value) -> float | None:
        """The value as its type, or a one-line UserError that says what is wrong and what to do."""
        if value is None:
            return None
        try:
            number = self.type(value)
        except (TypeError, ValueError):
            raise UserError(f"{mode}: --{self.name} '{value}' is not a number") from None
        if not self.check(number):
            raise UserError(f"{mode}: --{self.name} = {value} {self.rule}")
        if abs(number) > MAX_PARAMETER:
            raise UserError(
                f"{mode}: --{self.name} = {value} is too large: give at most {MAX_PARAMETER:g} in "
                f"magnitude (larger ones overflow the activations)"
            )
        return number


class InterventionContext(Protocol):
    """What a mode's builder reads besides the neuron set, its values and positions. `engine.patching.context.
    CacheContext` provides it for patch runs and the prompt lab alike; only `subtract_alpha` is each one's own."""

    loaded: object  # the base model (loading.LoadedModel), which the intervention hooks
    probe: np.ndarray  # (d_model,) the cache's probe direction
    arrays: dict[str, np.ndarray]  # the cache's act_pre, act_dpo and act_shift, (n_layers, d_mlp) float64 each

    def tuned(self) -> object:
        """The tuned (DPO) model (loading.LoadedModel), loaded on first use."""

    def cos_embedding(self) -> np.ndarray:
        """cos(value vector, toxic embedding) of every neuron of the base model (the tuning-free edit's ranking)."""

    def subtract_alpha(self) -> tuple[float, str]:
        """`subtract`'s α when none is given, and where it was measured."""


@dataclass(frozen=True)
class PatchMode:
    name: str
    description: str
    build: Callable  # (InterventionContext, selection, values, positions) -> interventions.Intervention
    parameters: tuple[Parameter, ...] = ()
    needs_set: bool = True
    acts_on_set: bool = True  # False: the mode ignores any neuron set (subtract acts on the residual stream)
    runs_tuned: bool = False  # the tuned model runs beside the base model (its memory and time count twice)

    def values(self, given: dict) -> dict:
        """Every parameter of this mode: the given value (checked) or its default; a name it does not take is an
        error."""
        known = {parameter.name: parameter for parameter in self.parameters}
        unknown = sorted(set(given) - set(known))
        if unknown:
            takes = ", ".join(f"--{name}" for name in known) or "no parameters"
            raise UserError(f"mode {self.name} takes no --{unknown[0]} (it takes {takes})")
        return {
            name: parameter.default if given.get(name) is None else parameter.validate(self.name, given[name])
            for name, parameter in known.items()
        }


def _interventions():
    from neuron_explorer.engine.patching import interventions

    return interventions


def _shift(context: InterventionContext, selection, values, positions):
    return _interventions().add_shift(
        context.loaded, selection, context.arrays["act_shift"], values["alpha"], positions
    )


def _patch_live(context: InterventionContext, selection, values, positions):
    return _interventions().patch_live(context.loaded, selection, context.tuned(), positions)


def _patch_mean(context: InterventionContext, selection, values, positions):
    return _interventions().patch_mean(context.loaded, selection, context.arrays["act_dpo"], positions)


def _scale(context: InterventionContext, selection, values, positions):
    return _interventions().scale(context.loaded, selection, values["factor"], positions)


def _constant(context: InterventionContext, selection, values, positions):
    return _interventions().set_constant(context.loaded, selection, values["value"], positions)


def _zero_ablate(context: InterventionContext, selection, values, positions):
    return _interventions().zero_ablate(context.loaded, selection, positions)


def _mean_ablate(context: InterventionContext, selection, values, positions):
    return _interventions().mean_ablate(context.loaded, selection, context.arrays["act_pre"], positions)


def _tuning_free(context: InterventionContext, selection, values, positions):
    edit = _interventions().tuning_free(
        context.loaded,
        context.arrays["act_pre"],
        context.cos_embedding(),
        alpha=values["alpha"],
        beta=values["beta"],
        restrict=selection,
        positions=positions,
    )
    edit.details["seed_words"] = TUNING_FREE_SEED_WORDS
    return edit


def _subtract(context: InterventionContext, selection, values, positions):
    alpha, fitted_on = values["alpha"], "given (--alpha)"
    if alpha is None:  # the size that matches DPO's own change of the last-layer projection, and where it was fitted
        alpha, fitted_on = context.subtract_alpha()
    edit = _interventions().subtract_direction(context.loaded, context.probe, alpha, positions)
    edit.details["alpha_fitted_on"] = fitted_on
    return edit


_MODES = (
    # The per-token shift keeps each neuron's token-to-token variation; clamping thousands of neurons to their mean
    # at every position (patch-mean) wrecks the model (perplexity 16.96 → 57.7 for TP↓ alone on the embedded pair).
    PatchMode(
        "shift",
        "add DPO's per-neuron mean shift per token: m ← m − α·δ",
        _shift,
        (Parameter("alpha", "multiple of δ", 1.0),),
    ),
    PatchMode(
        "patch-live",
        "patch to the DPO model's own per-token activations (it runs in lockstep: 2× slower)",
        _patch_live,
        runs_tuned=True,
    ),
    PatchMode(
        "patch-mean",
        "clamp to the DPO mean ā_dpo, the paper's patching (wrecks fluency at every position)",
        _patch_mean,
    ),
    PatchMode("scale", "scale by a factor: m ← f·m", _scale, (Parameter("factor", "the factor f", 0.5),)),
    PatchMode("constant", "set to a constant: m ← c", _constant, (Parameter("value", "the constant c", 0.0),)),
    PatchMode("zero-ablate", "zero-ablate (the value vectors off; the output bias stays)", _zero_ablate),
    PatchMode("mean-ablate", "mean-ablate to the base mean ā_pre", _mean_ablate),
    PatchMode(
        "tuning-free",
        "Yang v3's edit from base statistics: TP/AN to (1−α)ā, AP/TN to (1+α)ā (a set restricts it)",
        _tuning_free,
        (
            Parameter("alpha", "α, the size of the clamp", 0.05),
            Parameter(
                "beta",
                "β, the fraction of each sign class edited",
                0.5,
                check=lambda beta: 0 < beta <= 1,
                rule="must be in (0, 1]: the fraction of each sign class",
            ),
        ),
        needs_set=False,
    ),
    PatchMode(
        "subtract",
        "Lee's edit: subtract α·ŵ (the probe direction) from the last block's output",
        _subtract,
        (
            Parameter(
                "alpha",
                "the size α",
                None,
                default_help="DPO's change of the probe projection on the statistics prompts (the lab: on "
                "the prompt itself, in sample)",
            ),
        ),
        needs_set=False,
        acts_on_set=False,
    ),
)
MODES: dict[str, PatchMode] = {mode.name: mode for mode in _MODES}
DEFAULT_MODE = "shift"
# The paper preset's rows (runs.paper_preset): its ablation, its patch rows (the paper's mean patching by default,
# or one of the per-token modes) and its edit.
PRESET_ABLATION = "zero-ablate"
PRESET_PATCH_MODES = ("patch-mean", "patch-live", "shift")
PRESET_EDIT = "tuning-free"


def get(name: str) -> PatchMode:
    if name not in MODES:
        raise UserError(f"unknown mode '{name}': use one of {', '.join(MODES)}")
    return MODES[name]


def parameter_names() -> list[str]:
    """Every parameter name of any mode, in the registry's order (the command line has one option for each)."""
    return list(dict.fromkeys(parameter.name for mode in _MODES for parameter in mode.parameters))


def parameter_help(name: str) -> str:
    """The --NAME option's help: what it means, and its default, for each mode that takes it."""
    return "; ".join(
        f"{mode.name}: {parameter.help} (default {parameter.describe_default()})"
        for mode in _MODES
        for parameter in mode.parameters
        if parameter.name == name
    )


def describe() -> str:
    """Every mode, its parameters and defaults, one line each (the `patch` command's epilog)."""
    lines = ["modes:"]
    for mode in _MODES:
        parameters = " ".join(f"--{p.name} {p.describe_default()}" for p in mode.parameters)
        default = " (the default)" if mode.name == DEFAULT_MODE else ""
        lines.append(f"  {mode.name:<12} {mode.description}{default}" + (f" [{parameters}]" if parameters else ""))
    return "\n".join(lines)
