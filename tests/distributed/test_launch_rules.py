"""Under a multi-process launch only the data-parallel commands run; the others refuse with one line."""

from __future__ import annotations

import pytest

from neuron_explorer.cli import main


@pytest.mark.parametrize("argv", [["build"], ["lab", "cache.h5", "--prompt", "hi"], ["make-pairs"]])
def test_single_process_commands_refuse_a_multi_process_launch(argv, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "runs in one process" in error
    assert "compute, train-dpo, evaluate, patch" in error


def test_a_one_process_launch_is_a_plain_run(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["compute", "--prompts", "/nonexistent.txt"]) == 2
    assert "prompt file /nonexistent.txt does not exist" in capsys.readouterr().err
