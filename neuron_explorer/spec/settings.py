"""The settings that several commands and engine stages share, each field with its one default, its help and its
check. The commands' options derive from these (`add_options`, `from_args`), and the engine takes the dataclasses
themselves, so that a default such as 20 new tokens is written once. Torch-free: `cli.build_parser` imports it."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from neuron_explorer.errors import UserError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

NEW_TOKENS = 20  # greedy tokens after each prompt: recorded by `compute`, scored by every evaluation (METHOD §5)
MAX_PROMPT_TOKENS = 32  # prompt truncation, for recording and evaluation alike
SCORER = "profanity"  # the offline toxicity scorer every command grades with unless told otherwise
CHECK_SCORER = "wordlist"  # reported beside SCORER in evaluations; never used to make training data
SCORER_CHOICES = "profanity, wordlist or detoxify[:VARIANT]"
PROMPTS = "builtin:heldout"  # the shipped held-out prompts: what `compute` records and `evaluate` measures
CORPUS = "builtin"  # the neutral corpus (CPython docs) for perplexity and F1
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# Which positions `compute` averages (engine/neurons/recording.py reads them); each line is stored in the cache as
# `protocol`.
POSITION_PROTOCOLS = {
    "generated": "the generated tokens' own positions (Yang et al. v3, their HF code for Llama, Gemma, Mistral)",
    "predicting": "the last prompt position and generated tokens 1 to N-1, the positions that predict each new token "
    "(Yang et al. v1, their TransformerLens loop for GPT-2)",
    "prompt": "every real prompt position, no generation",
    "all": "every real prompt position and the generated tokens' own positions",
}
POSITION_MODES = tuple(POSITION_PROTOCOLS)


# --- argparse types: a bad number is refused while the arguments are parsed, in argparse's own one-line error ---


def at_least(minimum: int) -> Callable[[str], int]:
    """The type of a whole number of at least `minimum` (e.g. 2 tokens per perplexity window)."""

    def whole_number(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: give {minimum} or more")
        return value

    whole_number.__name__ = f"at least {minimum}"  # what argparse names in its error for a non-number
    return whole_number


positive_count = at_least(1)  # prompts, steps, tokens, batch size
non_negative = at_least(0)  # warm-up steps, patience, stored samples


def count_or_all(text: str) -> int:
    """A count where 0 means all (what the help of such options says)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give a count, or 0 for all")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


# --- fields that know their option -------------------------------------------------------------------------------


def setting(
    default: Any,
    help: str,
    *,
    minimum: int | None = None,
    all_when_zero: bool = False,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    none_word: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option: `minimum` (a whole number at least that),
    `all_when_zero` (None means all, given as 0), `choices`, `none_word` (the word that gives None, e.g. `none`)."""
    return field(
        default=default,
        metadata={
            "help": help,
            "minimum": minimum,
            "all_when_zero": all_when_zero,
            "choices": choices,
            "flag": flag,
            "metavar": metavar,
            "none_word": none_word,
        },
    )


def _flag(item: Field[Any]) -> str:
    flag: str | None = item.metadata.get("flag")
    return flag or "--" + item.name.replace("_", "-")


class _Checked:
    """Checks every field against its metadata once, when the settings are made, whoever makes them."""

    def __post_init__(self) -> None:
        for item in fields(self):  # type: ignore[arg-type]
            value, meta = getattr(self, item.name), item.metadata
            flag = _flag(item)
            if value is None and (meta.get("all_when_zero") or meta.get("none_word")):
                continue
            if meta.get("minimum") is not None and not (isinstance(value, int) and value >= meta["minimum"]):
                raise UserError(f"{flag} must be a whole number of at least {meta['minimum']}, not {value!r}")
            if meta.get("choices") and value not in meta["choices"]:
                raise UserError(f"{flag} must be one of {', '.join(meta['choices'])}, not {value!r}")


@dataclass(frozen=True)
class DeviceSettings(_Checked):
    """Where models run, for every command and the build: `auto` takes the GPU when torch sees one, and the dtype that
    suits the device (bfloat16 on a GPU that supports it, else float32; engine/model/loading.py resolves both). The
    cache's provenance records what `auto` chose."""

    device: str = setting("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N")
    dtype: str = setting(
        "auto",
        "weights' dtype (auto: bfloat16 on a GPU that supports it, else float32)",
        choices=("auto", *DTYPE_NAMES),
    )


@dataclass(frozen=True)
class RecordingSettings(_Checked):
    """How `compute` records both models (Yang et al. v3's positions by default); the cache stores these, and the
    lab replays a prompt by them."""

    positions: str = setting(
        "generated",
        "which positions to average: " + "; ".join(f"{mode}: {text}" for mode, text in POSITION_PROTOCOLS.items()),
        choices=POSITION_MODES,
    )
    new_tokens: int = setting(NEW_TOKENS, "tokens each model generates", minimum=1)
    max_prompt_tokens: int = setting(MAX_PROMPT_TOKENS, "prompt truncation", minimum=1)
    batch_size: int = setting(16, "prompts per batch", minimum=1)
    shared_continuation: bool = setting(
        False, "record the tuned model on the base model's continuation (same tokens for both)"
    )


@dataclass(frozen=True)
class EvaluationSettings(_Checked):
    """How toxicity, perplexity and F1 are measured (METHOD §5): the one set of numbers behind `evaluate`, `build`'s
    evaluation and patch runs (`RUN_EVALUATION`), so that their rows compare. None counts mean all."""

    ppl_window: int = setting(256, "tokens per perplexity window", minimum=2)
    ppl_windows: int | None = setting(24, "perplexity windows, 0 = all", minimum=1, all_when_zero=True)
    f1_items: int | None = setting(64, "F1 passages, 0 = all", minimum=1, all_when_zero=True)
    new_tokens: int = setting(NEW_TOKENS, "tokens generated per prompt", minimum=1)
    max_prompt_tokens: int = setting(MAX_PROMPT_TOKENS, "prompt truncation", minimum=1)
    batch_size: int = setting(32, "prompts per batch", minimum=1)
    ppl_batch_size: int = 4  # windows per perplexity pass; not an option


# A patch run evaluates smaller than `build`, so that one run takes about a minute on a CPU.
RUN_EVALUATION = EvaluationSettings(ppl_windows=8, f1_items=32)


@dataclass(frozen=True)
class RunSettings(_Checked):
    """How a patch run evaluates (`RUN_EVALUATION`, smaller than `build`'s), on which prompts and models."""

    prompts: str | None = None  # None: the prompts compute held out (`prompts.hold_out_for_patching`)
    in_sample: bool = False  # evaluate on the statistics prompts themselves (stated in the record)
    max_prompts: int | None = setting(100, "prompts for toxicity, 0 = all", minimum=1, all_when_zero=True)
    corpus: str = setting(CORPUS, "neutral corpus for perplexity and F1")
    scorer: str = setting(SCORER, "toxicity scorer")
    evaluation: EvaluationSettings = RUN_EVALUATION
    samples: int = setting(8, "sample generations stored with the run", minimum=0)
    base: str | None = None  # None: the base spec recorded in the cache
    tuned: str | None = None
    device: str = DeviceSettings.device
    dtype: str = DeviceSettings.dtype


@dataclass(frozen=True)
class DPOTraining(_Checked):
    """What DPO trains with, the same for `train-dpo` and the build's dpo stage."""

    beta: float = setting(0.1, "DPO β")
    learning_rate: float = setting(1e-5, "learning rate", flag="--lr")
    optimizer: str = setting("adamw_torch", "adamw_torch, rmsprop (Lee), ...")
    # chosen on builtin:validation with bench/dpo_validation_sweep.py (docs/alignment.md)
    max_steps: int = setting(80, "training steps", minimum=1, flag="--steps")
    batch_size: int = setting(4, "pairs per step and process", minimum=1)
    gradient_accumulation: int = setting(1, "gradient accumulation steps", minimum=1, flag="--grad-accum")
    warmup_steps: int = setting(0, "learning-rate warm-up steps", minimum=0, flag="--warmup")
    eval_pairs: int = setting(16, "held-out pairs for early stopping", minimum=0)
    eval_steps: int = setting(10, "steps between evaluations", minimum=1)
    save_steps: int = setting(
        20,
        "steps between checkpoints when no pairs are held out; with held-out pairs a "
        "checkpoint is saved at every evaluation",
        minimum=1,
    )
    patience: int = setting(3, "evaluations without improvement before stopping, 0 = never", minimum=0)


@dataclass(frozen=True)
class ScorerSettings(_Checked):
    """Which scorer grades toxicity, and which second one is reported beside it (None: none)."""

    scorer: str = setting(SCORER, f"toxicity scorer: {SCORER_CHOICES}")
    check_scorer: str | None = setting(
        CHECK_SCORER,
        f"second scorer reported beside the first, never used for training: {SCORER_CHOICES}, or none",
        none_word="none",
    )


Settings = TypeVar("Settings", bound="DataclassInstance")  # one of the settings dataclasses above


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    defaults: DataclassInstance,
    names: tuple[str, ...] | None = None,
    notes: dict[str, str] | None = None,
) -> None:
    """Add the options of `defaults`' fields (all with help, or `names`), with its values as their defaults and
    `notes` appended to a field's help; the option's destination is the field's name (read back by `from_args`)."""
    notes = notes or {}
    chosen = [item for item in fields(defaults) if "help" in item.metadata and (names is None or item.name in names)]
    if names is not None and len(chosen) != len(names):
        raise ValueError(f"{type(defaults).__name__} has no option {set(names) - {item.name for item in chosen}}")
    for item in chosen:
        meta, value = item.metadata, getattr(defaults, item.name)
        help_text = meta["help"] + notes.get(item.name, "")
        if isinstance(value, bool):
            parser.add_argument(
                _flag(item), dest=item.name, action="store_false" if value else "store_true", help=help_text
            )
            continue
        if value is None:
            value = 0 if meta["all_when_zero"] else meta["none_word"]
        parser.add_argument(
            _flag(item),
            dest=item.name,
            default=value,
            type=_argument_type(meta, value),
            choices=meta["choices"],
            metavar=meta["metavar"] or _metavar(item),
            help=f"{help_text} (default: %(default)s)",
        )


def _metavar(item: Field[Any]) -> str | None:
    """The flag's own word (`--steps STEPS`), not the field's, where the two differ; argparse's default otherwise."""
    flag: str | None = item.metadata.get("flag")
    return flag[2:].upper().replace("-", "_") if flag else None


def _argument_type(meta: Mapping[str, Any], default: Any) -> Callable[[str], Any]:
    if meta["minimum"] is None:
        return float if isinstance(default, float) else str
    return count_or_all if meta["all_when_zero"] else at_least(meta["minimum"])


def from_args(args: argparse.Namespace, defaults: Settings, names: tuple[str, ...] | None = None) -> Settings:
    """`defaults` with the fields that `add_options` put on `args` taken from it (0 or the none word → None): all of
    its options, or `names`, as given to `add_options`. Only those: two dataclasses may share a field name (the DPO
    batch and the evaluation batch are both `batch_size`), and a field `add_options` did not add would read the
    other's value."""
    chosen = [item for item in fields(defaults) if "help" in item.metadata and (names is None or item.name in names)]
    missing = [item.name for item in chosen if not hasattr(args, item.name)]
    if missing or (names is not None and len(chosen) != len(names)):
        raise ValueError(f"{type(defaults).__name__}: {missing or names} were not added by add_options")
    given = {}
    for item in chosen:
        value, meta = getattr(args, item.name), item.metadata
        if (meta["all_when_zero"] and value == 0) or (meta["none_word"] is not None and value == meta["none_word"]):
            value = None
        given[item.name] = value
    return replace(defaults, **given)


def flat_record(settings: Any) -> dict[str, Any]:
    """`settings` as one flat dict, the settings dataclasses it holds merged in: the record caches and stage keys
    keep (`provenance["settings"]`), flat as it was before those fields moved into the dataclasses here."""
    record: dict[str, Any] = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        record.update(flat_record(value) if is_dataclass(value) else {item.name: value})
    return record
