"""The one intervention type (neuron_explorer/spec/intervention.py): its command-line and JSON round trips for
every mode and position, one-line refusals of bad input, and the explorer's patch jobs, the `patch` and `lab`
commands and the lab's worker all giving and taking the same value."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from neuron_explorer.cli import build_parser
from neuron_explorer.engine.lab.protocol import RunRequest, parse_request
from neuron_explorer.engine.patching import modes
from neuron_explorer.errors import UserError
from neuron_explorer.explorer.jobs import paper_request, target_request
from neuron_explorer.spec import intervention as spec
from neuron_explorer.spec.intervention import INTERVENTION_POSITIONS, Intervention, PaperPreset, Positions

# A value other than the default for each parameter (0.75 passes every mode's check).
CASES = [
    Intervention(
        mode.name,
        ("group:TP↓", "ids:L1/N2") if mode.acts_on_set else (),
        positions,
        {parameter.name: 0.75 for parameter in mode.parameters},
        label,
    )
    for mode in modes.MODES.values()
    for positions in INTERVENTION_POSITIONS
    for label in (None, "my run ∪ ā")
]


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args([command, "x.h5", *argv])


@pytest.mark.parametrize("given", CASES, ids=lambda given: f"{given.mode}-{given.positions}-{given.label}")
def test_every_mode_and_position_survives_the_command_line_and_json(given):
    assert Intervention.from_args(parse("patch", given.to_argv())) == given
    assert Intervention.from_args(parse("lab", ["--prompt", "x", *given.to_argv()])) == given
    assert Intervention.from_json(given.to_json()) == given
    assert Intervention.from_dict(json.loads(json.dumps(given.to_dict()))) == given


@pytest.mark.parametrize("positions", list(Positions))
@pytest.mark.parametrize("mode", modes.PRESET_PATCH_MODES)
def test_the_paper_preset_survives_the_command_line(mode, positions):
    preset = PaperPreset(mode, positions)
    args = parse("patch", preset.to_argv())
    assert args.preset == "paper" and PaperPreset.from_args(args) == preset


def test_values_are_checked_and_typed_once_when_made():
    made = Intervention("scale", ["layer:1"], "newest", {"factor": "0.25"})
    assert made.sets == ("layer:1",) and made.positions is Positions.NEWEST and made.params == {"factor": 0.25}
    assert made.values() == {"factor": 0.25} and Intervention("scale", ("all",)).values() == {"factor": 0.5}
    assert Intervention("subtract").values() == {"alpha": None}  # measured by the session
    assert f"{made.positions}" == "newest" and json.loads(made.to_json())["positions"] == "newest"


def test_one_name_format():
    assert Intervention("shift", ("group:TP↓", "toxic:8")).name() == "shift group:TP↓ ∪ toxic:8"
    assert Intervention("tuning-free").name() == "tuning-free"
    assert Intervention("shift", ("all",), label="mine").name() == "mine"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Intervention("no-such-mode", ("all",)), "unknown mode 'no-such-mode'"),
        (lambda: Intervention("shift"), "mode shift needs a neuron set: pass --set SPEC"),
        (
            lambda: Intervention("scale", ("all",), "sideways"),
            "positions 'sideways' is not one of all, newest, authors",
        ),
        (lambda: Intervention("scale", ("all",), Positions.AUTHORS), "the paper preset's choice"),
        (lambda: Intervention("scale", ("all",), params={"alpha": 1}), "mode scale takes no --alpha"),
        (lambda: Intervention("scale", ("all",), params={"factor": "two"}), "scale: --factor 'two' is not a number"),
        (lambda: Intervention("tuning-free", params={"beta": 2}), "must be in (0, 1]"),
        (lambda: Intervention("scale", "all"), "sets must be a list"),
        (lambda: Intervention("scale", ("all",), label=""), "label"),
        (lambda: Intervention.from_dict({"mode": "scale", "sets": ["all"], "colour": "red"}), "takes no colour"),
        (lambda: Intervention.from_dict({"sets": ["all"]}), "needs a mode"),
        (lambda: Intervention.from_dict(["scale"]), "must be an object"),
        (lambda: Intervention.from_dict({"mode": "scale", "sets": "all"}), "sets must be a list"),
        (lambda: Intervention.from_json("{mode"), "must be a JSON object"),
        (lambda: PaperPreset("scale"), "patches its group rows with"),
        (lambda: PaperPreset(positions="sideways"), "positions 'sideways'"),
    ],
)
def test_bad_input_is_one_line(make, message):
    with pytest.raises(UserError) as caught:
        make()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_intervention_on_the_command_line_is_one_line(capsys):
    from neuron_explorer.cli import main

    assert main(["patch", "x.h5", "--mode", "scale", "--set", "all", "--alpha", "1"]) == 2
    assert capsys.readouterr().err == "neuron-explorer: error: mode scale takes no --alpha (it takes --factor)\n"
    with pytest.raises(UserError, match="invalid choice: 'authors'"):  # the lab runs no preset
        parse("lab", ["--prompt", "x", "--positions", "authors"])


def test_the_dialog_the_patch_command_and_the_lab_share_one_intervention():
    """A patch job from the explorer's dialog, parsed by the real `patch` parser, is the dialog's intervention; the
    lab sends the same value to its worker, which reads it back unchanged."""
    request = target_request("TP↓", ["group:TP↓"], 10).chosen("scale", Positions.NEWEST, {"factor": "0.25"}, 5)
    args = parse("patch", request.argv(Path("x.h5"))[1:])
    assert Intervention.from_args(args) == request.spec and args.max_prompts == 5 and args.progress_json
    assert request.spec.name() == "scale TP↓ (10)"  # the run's label names the target and its size
    sent = RunRequest(7, "You are", request.spec)
    assert parse_request(sent.to_json()).intervention == request.spec
    preset = paper_request().chosen("shift", Positions.NEWEST, {}, None)
    assert PaperPreset.from_args(parse("patch", preset.argv(Path("x.h5"))[1:])) == preset.spec


def test_every_position_has_words_for_the_help_and_the_dialog():
    assert all(position.description for position in Positions)
    assert spec.INTERVENTION_POSITIONS == (Positions.ALL, Positions.NEWEST)
