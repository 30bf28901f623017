"""The cache's atomic writes (cache/atomic.py): a full disk, permissions that follow the umask, stale temporaries.

A full disk is simulated at the lowest level Python reaches, ``os.pwrite`` failing with ENOSPC once a temporary file
holds some bytes (the HDF5 cache is written through ``os.pwrite``, see cache/writer.py), and, in a real process,
by a file-size limit that makes HDF5's own C writes fail, which used to crash the process in HDF5's close.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuron_explorer.cache import annotations
from neuron_explorer.cache.atomic import atomic_path, sweep_stale_temporaries, temporary_path, write_text_atomically
from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
from neuron_explorer.errors import UserError


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.name.endswith(".tmp"))


@pytest.fixture
def full_disk(monkeypatch):
    """Every write into a ``.tmp`` file fails with ENOSPC once the file holds 4 kB, as on a nearly full disk."""
    real_write = os.pwrite

    def write(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and os.fstat(fd).st_size >= 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", write)


# -- a full disk ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, message",
    [
        (errno.ENOSPC, "no space left to write .*: free some space or choose another location"),
        (errno.EROFS, "cannot write .*Read-only file system.*: choose another location"),
        (errno.EACCES, "cannot write .*Permission denied.*: choose another location"),
    ],
)
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, code, message):
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(UserError, match=message) as caught:
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise OSError(code, os.strerror(code))
    assert "\n" not in str(caught.value)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_other_errors_of_the_body_pass_through_and_leave_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.json") as temporary:
            temporary.write_text("half")
            raise FileNotFoundError(errno.ENOENT, "an input the body reads", "prompts.txt")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_a_cache_is_one_error_and_no_file(tmp_path, full_disk):
    with pytest.raises(UserError, match="no space left to write .*cache.h5") as caught:
        build_synthetic_cache(tmp_path / "cache.h5")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_compute_on_a_full_disk_exits_with_one_line(tmp_path, compute_args, full_disk, capsys):
    code = main([*compute_args, "-o", str(tmp_path / "out.h5")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert errors[-1].startswith("neuron-explorer: error: no space left to write")
    assert "Traceback" not in "\n".join(errors)
    assert not (tmp_path / "out.h5").exists() and leftovers(tmp_path) == []


@pytest.mark.slow  # a real process: the fast lane (pytest -m 'not slow') skips it
def test_compute_in_a_process_whose_writes_fail_in_hdf5_exits_cleanly(tmp_path, compute_args):
    """HDF5's own C writes fail (a file-size limit: EFBIG); before the fix the process died with SIGSEGV in the
    writer's close, after chained tracebacks, and the temporary stayed."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    done = subprocess.run(
        [sys.executable, "-m", "neuron_explorer.cli", *compute_args, "-o", str(tmp_path / "out.h5")],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode not in (0, -signal.SIGSEGV), done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("neuron-explorer: error: no space left to write"), (
        done.stderr[-2000:]
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.h5").exists() and leftovers(tmp_path) == []


# -- permissions follow the umask ----------------------------------------------------------------------------
def written_files(folder: Path) -> dict[str, Path]:
    """A cache, a run record, a baseline, a set, and saved weights (a probe, a model folder), all written by the
    tool's writers into ``folder``."""
    from safetensors.torch import save_file

    from neuron_explorer.engine.alignment.probe_training import ProbeFit, save_probe

    cache = build_synthetic_cache(folder / "cache.h5", n_layers=2, d_mlp=8, n_prompts=4)
    run = annotations.save_run(cache, {"label": "x"}, {"toxicity": 0.5}, [])
    annotations.save_baseline(cache, "key", {"toxicity": 0.5})
    annotations.save_set(cache, "some", [(0, 1)])
    fit = ProbeFit(weight=torch.zeros(4).numpy(), bias=0.0, metrics={})
    probe = save_probe(fit, folder / "probe.safetensors", {})
    with atomic_path(folder / "model") as model:  # how train-dpo and the embedded model save a weights folder
        model.mkdir()
        save_file({"weight": torch.zeros(2)}, str(model / "model.safetensors"))
    sidecar = annotations.sidecar_dir(cache)
    return {
        "cache": Path(cache),
        "run record": sidecar / "runs" / f"{run.run_id}.json",
        "baseline": sidecar / "baselines" / "key.json",
        "set": sidecar / "sets" / "some.json",
        "probe weights": probe,
        "model weights": folder / "model" / "model.safetensors",
        "model folder": folder / "model",
    }


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files = written_files(tmp_path)
    finally:
        os.umask(previous)
    modes = {name: oct(path.stat().st_mode & 0o777) for name, path in files.items()}
    expected = {name: oct((0o777 if path.is_dir() else 0o666) & ~umask) for name, path in files.items()}
    assert modes == expected


# -- stale temporaries ---------------------------------------------------------------------------------------
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("opened_by", ["cache writer", "run record", "baseline", "set"])
def test_opening_for_writing_sweeps_the_temporaries_of_dead_processes_only(tmp_path, opened_by):
    cache = tmp_path / "cache.h5"
    folders = {
        "cache writer": tmp_path,
        "run record": annotations.sidecar_dir(cache) / "runs",
        "baseline": annotations.sidecar_dir(cache) / "baselines",
        "set": annotations.sidecar_dir(cache) / "sets",
    }
    folder = folders[opened_by]
    folder.mkdir(parents=True, exist_ok=True)
    dead = temporary_path(folder / "old.json", dead_pid())
    dead_folder = temporary_path(folder / "weights", dead_pid())
    alive = temporary_path(folder / "busy.json", os.getpid())
    for path in (dead, alive):
        path.write_text("half")
    dead_folder.mkdir()
    (dead_folder / "model.safetensors").write_text("half")
    unrelated = folder / ".notes.tmp"  # no pid in the name: not ours to remove
    unrelated.write_text("keep")
    {
        "cache writer": lambda: build_synthetic_cache(cache, n_layers=2, d_mlp=8, n_prompts=4),
        "run record": lambda: annotations.save_run(cache, {}, {}, []),
        "baseline": lambda: annotations.save_baseline(cache, "key", {}),
        "set": lambda: annotations.save_set(cache, "some", [(0, 1)]),
    }[opened_by]()
    assert not dead.exists() and not dead_folder.exists()
    assert alive.exists() and unrelated.exists()


def test_the_sweep_reports_what_it_removed(tmp_path):
    dead = temporary_path(tmp_path / "a.h5", dead_pid())
    dead.write_text("half")
    assert sweep_stale_temporaries(tmp_path) == [dead]
    assert sweep_stale_temporaries(tmp_path / "missing") == []


def test_a_record_is_published_once_and_never_replaced(tmp_path):
    target = tmp_path / "run.json"
    write_text_atomically(target, json.dumps({"first": True}), replace=False)
    with pytest.raises(FileExistsError):
        write_text_atomically(target, json.dumps({"second": True}), replace=False)
    assert json.loads(target.read_text()) == {"first": True} and leftovers(tmp_path) == []


def test_a_folder_replaces_an_older_one_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    with atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "new.bin").write_text("new")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model", "new.bin"]
