"""The lab through the real entry point: `neuron-explorer CACHE` in a terminal, key 5, a prompt, the real model
worker on a tiny pair, its answer on screen, and a clean exit that leaves no worker behind."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pexpect
import pytest


def command() -> list[str]:
    found = shutil.which("neuron-explorer", path=os.path.dirname(sys.executable)) or shutil.which("neuron-explorer")
    return [found] if found else [sys.executable, "-m", "neuron_explorer"]


def lab_workers(cache: Path) -> list[int]:
    """Live processes serving `cache` (read from /proc: zombies have no command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--serve" in arguments and str(cache).encode() in arguments:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_prompt_in_the_lab_screen_is_answered_by_the_real_worker(tiny_cache, tmp_path):
    cache = tmp_path / "tiny.h5"
    shutil.copyfile(tiny_cache, cache)
    program, *args = command()
    child = pexpect.spawn(
        program,
        [*args, str(cache)],
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "TERM": "xterm-256color", "OMP_NUM_THREADS": "1"},
    )
    try:
        child.expect("Group shares")
        child.send("5")
        child.expect("ready")  # the worker loaded both models
        assert len(lab_workers(cache)) == 1
        child.send("You pathetic loser")
        child.send("\r")
        child.expect("tox [0-9.]+")  # a continuation and its score
        child.expect("residual")  # the heat maps' caption
        child.send("\x1b")  # leave the input
        time.sleep(0.5)
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    deadline = time.monotonic() + 10
    while lab_workers(cache) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lab_workers(cache), "the model worker outlived the app"
