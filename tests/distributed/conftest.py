"""Data-parallel runs: the real `torchrun` launching the real command line in 2 processes on the CPU (gloo, one
thread each), compared with the same command in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def run_command(
    args: list[str], processes: int = 1, script: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`neuron-explorer ARGS` in one process, or under `torchrun --nproc_per_node PROCESSES` (a free port each time);
    `script` replaces the entry point (a test wrapper that takes the same arguments)."""
    target = [str(script)] if script else ["-m", "neuron_explorer"]
    launcher = (
        []
        if processes == 1
        else ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone", "--max_restarts", "0"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *launcher, *target, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, pairs, prompts) -> dict[str, Path]:
    """The tiny pairs, a probe and 24 prompts (12 recorded, 12 held out for patch runs): 4 batches of 3 recorded."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "prompts.txt").write_text("\n".join(prompts * 2) + "\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")
    return {
        "root": root,
        "prompts": root / "prompts.txt",
        "probe": root / "probe.pt",
        **{
            f"{kind}_{role}": folder
            for kind, (base, tuned) in pairs.items()
            for role, folder in (("base", base), ("tuned", tuned))
        },
    }
