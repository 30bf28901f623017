"""Ctrl-C and SIGTERM while a cache is written (issue #20): an interrupt never publishes a damaged cache.

HDF5 writes through Python callbacks (cache/writer.py) and drops any exception raised in them: an interrupt that
landed there used to lose the write and then publish the damaged file over the older one. Here the interrupt is
raised inside the writer's own write call (deterministically, at a chosen call), and, in a real process, a real
SIGINT or SIGTERM is sent while HDF5 is inside that call. Each time the older cache must stay byte for byte, no
temporary may remain, and the process must stop with the interrupt.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(n)``: the n-th write into a temporary raises KeyboardInterrupt, as Python's SIGINT handler
    does when the signal lands there."""
    real_write = os.pwrite
    calls = {"n": 0, "at": None}

    def write(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            calls["n"] += 1
            if calls["n"] == calls["at"]:
                raise KeyboardInterrupt
        return real_write(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", write)

    def arm(at):
        calls["n"], calls["at"] = 0, at
        return calls

    return arm


@pytest.mark.parametrize("at", [1, 3, 10, 40, 80])
def test_an_interrupt_inside_an_hdf5_write_keeps_the_old_cache(tmp_path, interrupt_at, at):
    """Fails on the old code: HDF5 printed "Exception ignored ... KeyboardInterrupt", carried on without the bytes
    and the damaged file replaced the old cache."""
    target = tmp_path / "cache.h5"
    build_synthetic_cache(target, n_layers=2, d_mlp=8, n_prompts=6, seed=1)
    before = target.read_bytes()
    calls = interrupt_at(at)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_cache(target, n_layers=2, d_mlp=8, n_prompts=6, seed=2)
    assert calls["n"] >= at  # the interrupt was raised
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_a_write_lost_without_an_error_is_never_published(tmp_path, monkeypatch):
    """A write that vanishes (what HDF5 did with the interrupted one) is caught by the read-back before the rename.
    Fails on the old code, which published the file with the chunk missing."""
    from neuron_explorer.cache import writer as writer_module

    target = tmp_path / "cache.h5"
    build_synthetic_cache(target, n_layers=2, d_mlp=8, n_prompts=6, seed=1)
    before = target.read_bytes()
    real_write = writer_module._WriteOnceFailing.write
    calls = {"n": 0}

    def write(self, data):
        calls["n"] += 1
        if calls["n"] == 12:  # a chunk of data, not the superblock: dropped silently, as h5py did
            return len(memoryview(data).cast("B"))
        return real_write(self, data)

    monkeypatch.setattr(writer_module._WriteOnceFailing, "write", write)
    from neuron_explorer.errors import UserError

    with pytest.raises(UserError, match="did not read back as written.*nothing was published"):
        build_synthetic_cache(target, n_layers=2, d_mlp=8, n_prompts=6, seed=2)
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_compute_interrupted_inside_hdf5_exits_130_and_keeps_the_old_cache(
    compute_args, tmp_path, interrupt_at, capsys
):
    output = tmp_path / "out.h5"
    assert main([*compute_args, "-o", str(output)]) == 0
    before = output.read_bytes()
    interrupt_at(25)
    assert main([*compute_args, "-o", str(output)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert output.read_bytes() == before and leftovers(tmp_path) == []


# Run as `python -c SIGNALLER SIGNAL N ARGS...`: the N-th write into a temporary sends SIGNAL to this very process
# and goes on writing, so the signal lands while HDF5 is inside the write callback; then `python -m neuron_explorer`.
SIGNALLER = r"""
import os, runpy, signal, sys

number, at = getattr(signal, sys.argv[1]), int(sys.argv[2])
# A job started in the background by a shell without job control (as CI may start the suite) inherits SIGINT
# ignored, and Python keeps it ignored; a user at a terminal has Python's handler, which is what is tested here.
signal.signal(signal.SIGINT, signal.default_int_handler)
real_write, calls = os.pwrite, 0

def write(fd, data, offset):
    global calls
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
        calls += 1
        if calls == at:
            os.kill(os.getpid(), number)
    return real_write(fd, data, offset)

os.pwrite = write
sys.argv = ["neuron_explorer", *sys.argv[3:]]
runpy.run_module("neuron_explorer", run_name="__main__")
"""


@pytest.mark.slow  # real processes: the fast lane (pytest -m 'not slow') skips them
@pytest.mark.parametrize("name, at, code", [("SIGINT", 5, 130), ("SIGINT", 30, 130), ("SIGTERM", 30, 143)])
def test_a_real_signal_inside_hdf5_keeps_the_old_cache(compute_args, tmp_path, name, at, code):
    """Fails on the old code: exit 0 (or a segfault) with the damaged cache published."""
    output = tmp_path / "out.h5"
    assert main([*compute_args, "-o", str(output)]) == 0
    before = output.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", SIGNALLER, name, str(at), *compute_args, "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == code, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    assert output.read_bytes() == before and leftovers(tmp_path) == []
    with CacheReader(output):
        pass
