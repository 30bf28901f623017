"""`lab --set` without `--mode` patches with the same default mode as `patch` (the request the session gets)."""

from __future__ import annotations

import pytest

from neuron_explorer.cli import main
from neuron_explorer.engine.lab import session as lab_session
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache


class Asked(Exception):
    pass


@pytest.mark.parametrize(
    "options, mode",
    [(["--set", "group:TP↓"], "shift"), ([], None), (["--set", "group:TP↓", "--mode", "scale"], "scale")],
)
def test_lab_set_without_mode_takes_the_patch_default(tmp_path, monkeypatch, options, mode):
    cache = build_synthetic_cache(tmp_path / "synthetic.h5")
    asked = []

    class FakeSession:  # what the command hands the session, without loading a model
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def answer(self, request, report=None):
            asked.append(request)
            raise Asked

    monkeypatch.setattr(lab_session, "LabSession", FakeSession)
    with pytest.raises(Asked):
        main(["lab", str(cache), "--prompt", "You are", *options])
    intervention = asked[0].intervention
    assert (intervention and intervention.mode) == mode
