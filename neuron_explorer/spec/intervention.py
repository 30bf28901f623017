"""One intervention (a mode, the neuron sets it acts on, where, the parameters given, a label), the one value that a
patch run, the prompt lab and the explorer's patch dialog pass around. It is checked once, when it is made, against
the patch-mode registry (engine/patching/modes.py), and it crosses boundaries in two forms that round-trip: the
`patch`/`lab` options (`to_argv`, `from_args`) and JSON (`to_dict`/`from_dict`: the lab's requests and answers).
`PaperPreset` is the other thing a patch job may ask for: the papers' rows, one job.

Resolving the sets needs the cache and building the hooks needs the model: the engine does both (`runs.check_spec`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from neuron_explorer.engine.patching import modes
from neuron_explorer.errors import UserError


class Positions(str, Enum):
    """Where an intervention acts (interventions.py implements ALL and NEWEST); AUTHORS is the paper preset's own
    choice per row, never one intervention's."""

    ALL = "all"
    NEWEST = "newest"
    AUTHORS = "authors"

    def __str__(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        return _POSITION_TEXTS[self]

    @classmethod
    def parse(cls, value: object) -> Positions:
        """The member a value names, or a one-line UserError."""
        try:
            return cls(value)
        except ValueError:
            raise UserError(f"positions '{value}' is not one of {', '.join(p.value for p in cls)}") from None


_POSITION_TEXTS = {
    Positions.ALL: "every position (perplexity too)",
    Positions.NEWEST: "newest position only (the authors' protocol; perplexity as in generation)",
    Positions.AUTHORS: "the paper preset's rows as the authors ran them: ablation at every position, the rest newest",
}
# What one intervention can do; AUTHORS is a preset's choice only.
INTERVENTION_POSITIONS = (Positions.ALL, Positions.NEWEST)


@dataclass(frozen=True)
class Intervention:
    """What to do to the base model: `mode` (a name of the registry) on the union of `sets` (neuron-set specs, see
    neuron_sets.py) at `positions`, with the parameters given in `params` (the mode's defaults fill the rest)."""

    mode: str = modes.DEFAULT_MODE
    sets: tuple[str, ...] = ()
    positions: Positions = Positions.ALL
    params: dict[str, float] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        mode = modes.get(self.mode)
        positions = Positions.parse(self.positions)
        if positions not in INTERVENTION_POSITIONS:
            raise UserError(
                f"positions '{positions.value}' is the paper preset's choice: one intervention acts at "
                f"{' or '.join(p.value for p in INTERVENTION_POSITIONS)}"
            )
        if isinstance(self.sets, str) or not all(isinstance(spec, str) and spec.strip() for spec in self.sets):
            raise UserError('sets must be a list of neuron-set specs such as "group:TP↓"')
        if mode.needs_set and not self.sets:
            raise UserError(f"mode {mode.name} needs a neuron set: pass --set SPEC (e.g. --set group:TP↓)")
        if not isinstance(self.params, dict):
            raise UserError('params must be an object such as {"alpha": 1.0}')
        values = mode.values(self.params)  # a parameter the mode does not take, or a bad value: a UserError
        if self.label is not None and not (isinstance(self.label, str) and self.label.strip()):
            raise UserError("a label must be a non-empty text")
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "sets", tuple(self.sets))
        object.__setattr__(self, "params", {name: values[name] for name in self.params if values[name] is not None})

    def values(self) -> dict[str, float | None]:
        """Every parameter of the mode: the given value or its default (None: the builder measures it)."""
        return modes.get(self.mode).values(self.params)

    def name(self) -> str:
        """How a run, a job and the lab call it: the label, else the mode and its sets."""
        return self.label or f"{self.mode} {' ∪ '.join(self.sets)}".strip()

    # -- the command line ------------------------------------------------------------------------------------------
    def to_argv(self) -> list[str]:
        """The `patch` (and `lab`) options that ask for this intervention."""
        argv = [option for spec in self.sets for option in ("--set", spec)]
        argv += ["--mode", self.mode, "--positions", self.positions.value]
        argv += [option for name, value in self.params.items() for option in (f"--{name}", repr(value))]
        return argv + (["--label", self.label] if self.label else [])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Intervention:
        """The intervention parsed options ask for (`add_arguments`); a mode not given is the default mode."""
        return cls(
            args.mode or modes.DEFAULT_MODE,
            tuple(args.sets),
            args.positions or Positions.ALL,
            given_params(args),
            getattr(args, "label", None),
        )

    # -- JSON ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "sets": list(self.sets),
            "positions": self.positions.value,
            "params": dict(self.params),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, payload: object) -> Intervention:
        """The intervention a JSON object describes, or a one-line UserError."""
        if not isinstance(payload, dict):
            raise UserError(f"an intervention must be an object with a mode, not {payload!r}")
        unknown = sorted(set(payload) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(
                f"an intervention takes no {', '.join(unknown)} (it takes {', '.join(cls.__dataclass_fields__)})"
            )
        if "mode" not in payload:
            raise UserError("an intervention needs a mode")
        sets = payload.get("sets", [])
        if not isinstance(sets, list):
            raise UserError('sets must be a list of neuron-set specs such as "group:TP↓"')
        return cls(
            payload["mode"],
            tuple(sets),
            payload.get("positions", Positions.ALL.value),
            payload.get("params", {}),
            payload.get("label"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Intervention:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"an intervention must be a JSON object: {error}") from None
        return cls.from_dict(payload)


@dataclass(frozen=True)
class PaperPreset:
    """`patch --preset paper`: the papers' rows as one job (runs.paper_preset), with the mode its group rows patch
    with and where the rows act (AUTHORS: each row as the authors ran it)."""

    mode: str = modes.PRESET_PATCH_MODES[0]
    positions: Positions = Positions.AUTHORS

    def __post_init__(self) -> None:
        if self.mode not in modes.PRESET_PATCH_MODES:
            raise UserError(
                f"the paper preset patches its group rows with {' or '.join(modes.PRESET_PATCH_MODES)}, not {self.mode}"
            )
        object.__setattr__(self, "positions", Positions.parse(self.positions))

    def to_argv(self) -> list[str]:
        argv = ["--preset", "paper", "--mode", self.mode]
        return argv + ([] if self.positions is Positions.AUTHORS else ["--positions", self.positions.value])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PaperPreset:
        return cls(args.mode or modes.PRESET_PATCH_MODES[0], args.positions or Positions.AUTHORS)

    def name(self) -> str:
        return f"the papers' comparison ({self.mode} for the group rows)"


def given_params(args: argparse.Namespace) -> dict[str, Any]:
    """The mode parameters given as options (`add_arguments`), unchecked: the mode that takes them checks them."""
    return {name: getattr(args, name) for name in modes.parameter_names() if getattr(args, name) is not None}


def add_arguments(group: argparse._ActionsContainer, *, preset: bool = False, label: bool = True) -> None:
    """The intervention's options (`Intervention.from_args` reads them back); `preset`: --positions also takes
    `authors`, the paper preset's per-row choice."""
    group.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SPEC",
        help="neurons to act on (repeatable; the union is taken), e.g. group:TP↓, toxic:128",
    )
    group.add_argument(
        "--mode",
        choices=tuple(modes.MODES),
        default=None,
        help=f"what to do to them (default: {modes.DEFAULT_MODE}"
        + (
            f"; the preset's patch rows: {', '.join(modes.PRESET_PATCH_MODES)}, default {modes.PRESET_PATCH_MODES[0]})"
            if preset
            else ")"
        ),
    )
    choices = tuple(Positions) if preset else INTERVENTION_POSITIONS
    group.add_argument(
        "--positions",
        choices=[p.value for p in choices],
        default=None,
        help="; ".join(f"{p.value}: {p.description}" for p in choices)
        + " (default: all"
        + ("; the preset: authors)" if preset else ")"),
    )
    for name in modes.parameter_names():  # checked by the mode that takes it (modes.Parameter.validate)
        group.add_argument(f"--{name}", default=None, help=modes.parameter_help(name))
    if label:
        group.add_argument("--label", default=None, help="a name for the run (default: mode and sets)")
