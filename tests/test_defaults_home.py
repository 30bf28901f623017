"""Every shared default has one home, `spec/settings.py`: no other module of the package may retype one of its
values as the default of the same setting (a parameter's or a dataclass field's default, an argparse `default=`, or a
`.get(name, fallback)`). The values are read from the settings dataclasses themselves, so a changed default cannot
leave an old copy behind."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from neuron_explorer.spec import settings as spec

PACKAGE = Path(spec.__file__).resolve().parents[1]
HOME = Path(spec.__file__).resolve()
# Settings whose values are not a shared default: every loop picks its own batch size, and flags such as
# `in_sample` or `shared_continuation` default to False everywhere.
UNWATCHED = {"batch_size", "ppl_batch_size"}
# Other names the same settings go by outside the dataclasses.
ALIASES = {
    "detector_scorer": "scorer",
    "prompt_tokens": "max_prompt_tokens",
    "gold_tokens": "new_tokens",
    "heldout_prompts": "prompts",
}


def watched_defaults() -> dict[str, set]:
    """Each setting's default values (a run's and the full evaluation's both), from the dataclasses."""
    values: dict[str, set] = {}
    for defaults in (
        spec.DeviceSettings(),
        spec.RecordingSettings(),
        spec.EvaluationSettings(),
        spec.RUN_EVALUATION,
        spec.ScorerSettings(),
        spec.RunSettings(),
    ):
        for item in fields(defaults):
            value = getattr(defaults, item.name)
            if item.name not in UNWATCHED and isinstance(value, (int, str)) and not isinstance(value, bool):
                values.setdefault(item.name, set()).add(value)
    values["prompts"] = {spec.PROMPTS}  # the prompt source when none is given (RunSettings' None means held out)
    for alias, name in ALIASES.items():
        values[alias] = values[name]
    return values


def _constant(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else None


def _option_name(call: ast.Call) -> str | None:
    """The destination an `add_argument` call stores into: its `dest=`, else its long flag."""
    for keyword in call.keywords:
        if keyword.arg == "dest":
            return _constant(keyword.value)
    flags = [_constant(arg) for arg in call.args]
    long = [flag for flag in flags if isinstance(flag, str) and flag.startswith("--")]
    return long[0][2:].replace("-", "_") if long else None


def retyped_defaults(tree: ast.AST) -> list[tuple[int, str, object]]:
    """(line, setting name, literal) for every literal default of a named setting in `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [
                *zip(positional[len(positional) - len(args.defaults) :], args.defaults),
                *zip(args.kwonlyargs, args.kw_defaults),
            ]
            found += [(default.lineno, arg.arg, _constant(default)) for arg, default in pairs if default is not None]
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    found.append((statement.lineno, statement.target.id, _constant(statement.value)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "add_argument":
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                found.append((node.lineno, _option_name(node), _constant(default)))
            elif node.func.attr == "get" and len(node.args) == 2:
                found.append((node.lineno, _constant(node.args[0]), _constant(node.args[1])))
    return [(line, name, value) for line, name, value in found if value is not None and name is not None]


def offences(source: str, watched: dict[str, set]) -> list[str]:
    return [
        f"line {line}: {name} = {value!r}"
        for line, name, value in retyped_defaults(ast.parse(source))
        if name in watched and not isinstance(value, bool) and value in watched[name]
    ]


def test_the_shared_defaults_live_only_in_spec_settings():
    watched = watched_defaults()
    assert {
        "new_tokens",
        "max_prompt_tokens",
        "ppl_window",
        "ppl_windows",
        "f1_items",
        "scorer",
        "check_scorer",
        "device",
        "dtype",
        "positions",
    } <= set(watched)
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == HOME:
            continue
        problems += [
            f"{path.relative_to(PACKAGE.parent)} {offence}"
            for offence in offences(path.read_text(encoding="utf-8"), watched)
        ]
    assert not problems, (
        "defaults retyped outside neuron_explorer/spec/settings.py (take them from its dataclasses "
        "or add_options):\n" + "\n".join(problems)
    )


@pytest.mark.parametrize(
    "source",
    [
        "def generate(loaded, new_tokens: int = 20): ...",
        "def load(spec, *, device='auto'): ...",
        "class Settings:\n    ppl_windows: int | None = 8\n",
        "parser.add_argument('--scorer', default='profanity')",
        "group.add_argument('--max-prompt-tokens', type=int, default=32, help='truncation')",
        "settings.get('new_tokens', 20)",
        "def score(texts, detector_scorer='profanity'): ...",
    ],
)
def test_a_retyped_default_is_found(source):
    assert offences(source, watched_defaults())


@pytest.mark.parametrize(
    "source",
    [
        "def sample_openings(loaded, new_tokens: int = 12): ...",  # another number: another setting
        "def generate(loaded, new_tokens: int = NEW_TOKENS): ...",
        "parser.add_argument('--positions', default=None)",
        "parser.add_argument('--batch-size', default=4)",
        "class Scorer:\n    name = 'profanity'\n",  # a scorer's own name, not a default
    ],
)
def test_what_is_not_a_retyped_default_passes(source):
    assert not offences(source, watched_defaults())


def parsed(argv: list[str]):
    from neuron_explorer.cli import build_parser

    return build_parser().parse_args(argv)


def test_the_command_lines_read_back_the_defaults_they_were_given():
    """With no option given, each command's settings are the dataclasses' own defaults, read back through the
    options `add_options` made: a field read from another dataclass's option of the same name (the build's DPO
    `--batch-size` taken for its evaluation batch) fails here."""
    from neuron_explorer.commands import build, evaluate, patch

    settings = build.build_settings(parsed(["build"]))
    assert settings.evaluation == spec.EvaluationSettings()
    assert settings.dpo == spec.DPOTraining()
    assert settings.scoring == spec.ScorerSettings()
    args = parsed(["evaluate", "model"])
    assert spec.from_args(args, spec.EvaluationSettings(), evaluate.EVALUATION_OPTIONS) == spec.EvaluationSettings()
    args = parsed(["patch", "cache.h5", "--set", "group:TP↓"])
    assert spec.from_args(args, spec.RUN_EVALUATION, patch.EVALUATION_OPTIONS) == spec.RUN_EVALUATION
    assert spec.from_args(args, spec.RunSettings()) == spec.RunSettings()


def test_reading_an_option_that_was_not_added_is_refused():
    args = parsed(["build"])  # has the DPO `batch_size`, not the evaluation's other fields
    with pytest.raises(ValueError, match="not added by add_options"):
        spec.from_args(args, spec.EvaluationSettings())
