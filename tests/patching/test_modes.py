"""The patch-mode registry: every mode goes from the command line to its intervention; bad parameters are one-line
errors; and a mode's name is written in one module only."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import pytest

import neuron_explorer
from neuron_explorer.cache.schema import GROUP_NAMES
from neuron_explorer.cli import main
from neuron_explorer.engine.patching import modes
from neuron_explorer.engine.patching.runs import PatchSession

from .test_runs import SMALL_ARGS

# A value other than the default for each parameter, and where the intervention shows it.
GIVEN = {
    "shift": ["--alpha", "2"],
    "scale": ["--factor", "0.25"],
    "constant": ["--value", "3"],
    "tuning-free": ["--alpha", "0.1", "--beta", "0.25"],
    "subtract": [],
}
EXPECTED = {
    "shift": {"alpha": 2.0},
    "scale": {"factor": 0.25},
    "constant": {"value": 3.0},
    "tuning-free": {"alpha": 0.1, "beta": 0.25},
    "subtract": {"alpha": 3.0 - 1.0},
}


class Stop(Exception):
    """Raised where evaluation would start: the intervention has been built by then."""


@pytest.mark.parametrize("name", list(modes.MODES))
def test_every_mode_is_accepted_by_the_command_and_builds_its_intervention(name, cache_copy, monkeypatch):
    built = []
    real = PatchSession.intervention
    monkeypatch.setattr(PatchSession, "intervention", lambda self, spec: built.append(real(self, spec)) or built[-1])
    baseline = {"base": {"probe_projection": 3.0}, "dpo": {"probe_projection": 1.0}}
    monkeypatch.setattr(PatchSession, "ensure_baseline", lambda self: baseline)
    monkeypatch.setattr(PatchSession, "subtract_alpha", lambda self: (3.0 - 1.0, "statistics prompts"))
    monkeypatch.setattr(PatchSession, "measure", lambda self, *args: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        main(["patch", str(cache_copy), *SMALL_ARGS, "--mode", name, "--set", "group:TP↓", *GIVEN.get(name, [])])
    intervention, _ = built[-1]
    assert intervention.mode == name
    assert {key: intervention.details[key] for key in EXPECTED.get(name, {})} == EXPECTED.get(name, {})
    with h5py.File(cache_copy, "r") as file:  # the group read straight from the file, not through neuron_sets
        in_group = int((file["neurons/group"][:] == GROUP_NAMES.index("TP↓")).sum())
    if modes.MODES[name].acts_on_set and name != "tuning-free":
        assert intervention.n_neurons == in_group
    if name == "tuning-free":  # restricted to the set: at most the group, about β of it
        assert 0 < intervention.n_neurons <= in_group


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--mode", "tuning-free", "--beta", "1.5"],
            "tuning-free: --beta = 1.5 must be in (0, 1]: the fraction of each sign class",
        ),
        (["--mode", "scale", "--factor", "nan"], "scale: --factor = nan must be a finite number"),
        (["--mode", "constant", "--value", "two"], "constant: --value 'two' is not a number"),
        (["--mode", "shift", "--factor", "2"], "mode shift takes no --factor (it takes --alpha)"),
        (["--mode", "zero-ablate", "--alpha", "1"], "mode zero-ablate takes no --alpha (it takes no parameters)"),
    ],
)
def test_a_bad_parameter_is_refused_in_one_line_before_anything_runs(argv, message, cache_copy, capsys):
    assert main(["patch", str(cache_copy), "--set", "group:TP↓", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"neuron-explorer: error: {message}\n"
    assert not Path(f"{cache_copy}.annotations").exists() or not any(Path(f"{cache_copy}.annotations").rglob("*.json"))


def test_parameter_defaults_come_from_the_registry_alone():
    assert modes.MODES["tuning-free"].values({}) == {"alpha": 0.05, "beta": 0.5}
    assert modes.MODES["scale"].values({"factor": "2"}) == {"factor": 2.0}
    assert "tuning-free: α, the size of the clamp (default 0.05)" in modes.parameter_help("alpha")


def test_each_mode_name_is_written_in_the_registry_only():
    """Besides the registry, only the interventions it builds name themselves (`Intervention.mode`). A learning-rate
    schedule that happens to share a mode's name ("constant") is another concept."""
    package = Path(neuron_explorer.__file__).parent
    for name in modes.MODES:
        quoted = re.compile(rf"""["']{re.escape(name)}["']""")
        homes = {
            path.relative_to(package).as_posix()
            for path in package.rglob("*.py")
            if any(
                quoted.search(line)
                for line in path.read_text(encoding="utf-8").splitlines()
                if "lr_scheduler_type" not in line
            )
        }
        assert homes - {"engine/patching/interventions.py"} == {"engine/patching/modes.py"}, (name, homes)
