"""The explorer launching the real `python -m neuron_explorer patch` subprocess on a tiny model's cache."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from textual.widgets import DataTable

from neuron_explorer.cache import annotations
from neuron_explorer.cache.provenance import sha256_file
from neuron_explorer.explorer.app import ExplorerApp
from neuron_explorer.explorer.jobs import PatchRequest, paper_request
from neuron_explorer.explorer.state import Store
from neuron_explorer.spec.intervention import Intervention


@pytest.mark.slow  # a real process: the fast lane (pytest -m 'not slow') skips it
async def test_a_real_patch_run_from_the_explorer(cache_copy, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocess's torch: one thread for a tiny model
    before = sha256_file(cache_copy)
    app = ExplorerApp(Store.open(cache_copy))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await app.workers.wait_for_complete()
            request = PatchRequest(
                "group TP↓",
                0,
                Intervention("patch-mean", ("group:TP↓",)),
                max_prompts=3,
                extra=(
                    "--ppl-window",
                    "32",
                    "--ppl-windows",
                    "2",
                    "--f1-items",
                    "3",
                    "--new-tokens",
                    "4",
                    "--batch-size",
                    "2",
                ),
            )
            job = app.start_patch(request)  # its progress below can only come from the command's JSON events
            await pilot.press("4")
            deadline = time.monotonic() + 240
            while not job.finished and time.monotonic() < deadline:
                await pilot.pause(0.2)
            assert job.state == "done", job.error
            assert job.total > 0 and job.done == job.total
            await app.workers.wait_for_complete()
            await pilot.pause()
            runs = annotations.list_runs(cache_copy)
            assert [run.run_id for run in runs] == job.run_ids
            assert runs[0].metrics["n_prompts"] == 3 and runs[0].samples
            table = app.screen.query_one("#runs-table", DataTable)
            assert table.row_count == 3  # base, DPO (this run's baseline) and the run
    finally:
        app.store.reader.close()
    assert sha256_file(cache_copy) == before


@pytest.mark.slow  # nine evaluations of a tiny model in a real process
async def test_the_papers_comparison_from_the_explorer_is_one_job(cache_copy, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    app = ExplorerApp(Store.open(cache_copy))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await app.workers.wait_for_complete()
            request = replace(
                paper_request(),
                max_prompts=2,
                extra=(
                    "--ppl-window",
                    "16",
                    "--ppl-windows",
                    "1",
                    "--f1-items",
                    "1",
                    "--new-tokens",
                    "2",
                    "--batch-size",
                    "2",
                ),
            )
            job = app.start_patch(request)
            await pilot.press("4")
            deadline = time.monotonic() + 500
            while not job.finished and time.monotonic() < deadline:
                await pilot.pause(0.2)
            assert job.state == "done", job.error
            assert job.total > 0 and job.done == job.total  # one count over base, DPO and the seven rows
            await app.workers.wait_for_complete()
            await pilot.pause()
            runs = annotations.list_runs(cache_copy)
            assert len(runs) == 7 and {run.run_id for run in runs} == set(job.run_ids)
            assert job.run_labels[0] == "ablate top-128 toxic" and all(run.settings["baseline"] for run in runs)
            table = app.screen.query_one("#runs-table", DataTable)
            assert table.row_count == 9  # base, DPO and the seven rows
    finally:
        app.store.reader.close()
