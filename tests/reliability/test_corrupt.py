"""Corrupted caches and sidecar records, opened the way a user opens them: the explorer refuses a damaged cache in
one line before the terminal is taken, and skips a damaged run record (saying which and why) without crashing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from neuron_explorer.cache import annotations
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
from neuron_explorer.errors import UserError
from neuron_explorer.explorer.app import ExplorerApp, run_explorer
from neuron_explorer.explorer.state import Store


def drop(name):
    def change(handle):
        del handle[name]

    return change


def replace(name, data):
    def change(handle):
        del handle[name]
        handle[name] = data

    return change


def set_attribute(name, value):
    def change(handle):
        handle.attrs[name] = value

    return change


# name -> (how the file is damaged, what the one-line error says)
CACHE_DAMAGE = {
    "truncated": (None, "not a readable HDF5 file"),
    "neurons deleted": (drop("neurons"), r"damaged \(no dataset /neurons/"),
    "a neuron column deleted": (drop("neurons/contribution"), r"damaged \(no dataset /neurons/contribution\)"),
    "a column of strings": (
        replace("neurons/contribution", np.array(["x"] * 8, dtype=object).astype("S1")),
        r"damaged \(/neurons/contribution holds",
    ),
    "a column of the wrong shape": (
        replace("neurons/contribution", np.zeros((2, 3), dtype=np.float32)),
        r"damaged \(/neurons/contribution has shape \(2, 3\)",
    ),
    "a newer schema": (set_attribute("schema_version", 99), "cache schema 99, newer than"),
    "never finished": (set_attribute("complete", False), "incomplete"),
    "no architecture": (lambda handle: handle.attrs.__delitem__("architecture"), "no root attribute architecture"),
}


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    return build_synthetic_cache(tmp_path_factory.mktemp("good") / "cache.h5", n_layers=2, d_mlp=4, n_prompts=6)


def damaged(good_cache, folder, kind):
    path = folder / "cache.h5"
    shutil.copyfile(good_cache, path)
    change, _ = CACHE_DAMAGE[kind]
    if change is None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        with h5py.File(path, "r+") as handle:
            change(handle)
    return path


@pytest.mark.parametrize("kind", CACHE_DAMAGE)
def test_a_damaged_cache_is_refused_before_the_terminal_is_taken(good_cache, tmp_path, kind):
    path = damaged(good_cache, tmp_path, kind)
    before = path.read_bytes()
    with pytest.raises(UserError, match=CACHE_DAMAGE[kind][1]) as refused:
        run_explorer(path)
    assert "\n" not in str(refused.value) and path.read_bytes() == before


@pytest.mark.slow  # a real process: the fast lane (pytest -m 'not slow') skips it
def test_a_damaged_cache_from_the_command_line_is_one_line(good_cache, tmp_path):
    path = damaged(good_cache, tmp_path, "neurons deleted")
    done = subprocess.run(
        [sys.executable, "-m", "neuron_explorer", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("neuron-explorer: error: ")
    assert "no dataset /neurons/" in done.stderr


RECORD_DAMAGE = {
    "not JSON": "{not json",
    "a list, not an object": json.dumps([1, 2, 3]),
    "no metrics": json.dumps({"created": "2026-01-02", "settings": {}, "samples": []}),
    "metrics of the wrong type": json.dumps({"created": "2026-01-02", "settings": {}, "metrics": [0.5], "samples": []}),
    "empty": "",
}


@pytest.mark.parametrize("kind", RECORD_DAMAGE)
async def test_a_damaged_run_record_is_skipped_and_named_and_the_others_shown(good_cache, tmp_path, kind):
    path = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, path)
    good = annotations.save_run(path, {"label": "the good run"}, {"toxicity": 0.25}, [])
    broken = annotations.sidecar_dir(path) / "runs" / "damaged.json"
    broken.write_text(RECORD_DAMAGE[kind])
    problems: list[str] = []
    assert [run.run_id for run in annotations.list_runs(path, problems)] == [good.run_id]
    assert len(problems) == 1 and "damaged.json" in problems[0]
    app = ExplorerApp(Store.open(path))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("4")
        await pilot.pause()
        table = app.screen.query_one("#runs-table")
        labels = [str(table.get_row_at(row)[0]) for row in range(table.row_count)]
        assert "the good run" in labels
        assert any("damaged.json" in str(notice.message) for notice in app._notifications)
    app.store.reader.close()


class Planted:
    """A pickle that would create a file when unpickled: what a malicious probe or checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_a_probe_that_holds_a_pickle_is_refused_and_never_unpickled(tmp_path, suffix):
    import pickle

    import torch

    from neuron_explorer.engine.measure.probe import load_probe

    marker = tmp_path / "unpickled"
    probe = tmp_path / f"evil{suffix}"
    if suffix == ".pt":
        torch.save({"weight": Planted(marker)}, probe)
    else:
        np.save(probe, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    pickle.loads(pickle.dumps(Planted(tmp_path / "control")))  # the planted object does create its file
    assert (tmp_path / "control").exists()
    with pytest.raises(UserError) as refused:
        load_probe(probe, 32)
    assert "\n" not in str(refused.value) and not marker.exists()


def test_a_checkpoint_that_holds_a_pickle_is_refused_and_never_unpickled(tiny_models, tmp_path):
    import torch

    from neuron_explorer.engine.model.loading import load_model

    marker = tmp_path / "unpickled"
    checkpoint = tmp_path / "policy.pt"
    torch.save({"state": Planted(marker)}, checkpoint)
    with pytest.raises(UserError) as refused:
        load_model(f"{tiny_models['llama']}+{checkpoint}", device="cpu", dtype="float32")
    assert "\n" not in str(refused.value) and not marker.exists()
