"""Under a multi-process launch only the data-parallel commands run; the others refuse with one line."""

from __future__ import annotations

import pytest
import torch

from neuron_explorer.cli import main


@pytest.mark.parametrize("argv", [["build"], ["lab", "cache.h5", "--prompt", "hi"], ["make-pairs"]])
def test_single_process_commands_refuse_a_multi_process_launch(argv, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "runs in one process" in error
    assert "compute, train-dpo, evaluate, patch" in error


@pytest.mark.parametrize("world_size,runs", [("1", True), (None, True), ("2", False)])
def test_a_one_process_launch_is_a_plain_run(world_size, runs, monkeypatch, capsys):
    """WORLD_SIZE=1 (what `torchrun --nproc_per_node 1` sets) runs a one-process command as without a launcher, and
    a data-parallel command joins no process group; WORLD_SIZE=2 refuses the same command, so the test can fail."""
    from neuron_explorer.commands import lab
    from neuron_explorer.engine.model.distributed import current_ranks

    ran = []
    monkeypatch.setattr(lab, "run", lambda args: ran.append(args.command) or 0)
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    assert main(["lab", "cache.h5", "--prompt", "hi"]) == (0 if runs else 2)
    assert ran == (["lab"] if runs else [])
    assert ("runs in one process" in capsys.readouterr().err) is not runs
    if runs:
        current_ranks.cache_clear()
        try:
            ranks = current_ranks()
            assert (ranks.world_size, ranks.rank, ranks.main) == (1, 0, True)
            assert not torch.distributed.is_initialized()
        finally:
            current_ranks.cache_clear()
