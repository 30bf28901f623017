"""The prompt lab: its model worker (a stand-in that speaks the real protocol, tests/explorer/fake_lab_worker.py),
the three continuations, the heat maps, the prompt's neurons in the shared neuron table, interventions, history,
export, crashes, cancelling and a worker that cannot start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from textual.widgets import Input, OptionList, Select

from neuron_explorer.engine.lab.protocol import layer_bins
from neuron_explorer.explorer.commands import palette_commands
from neuron_explorer.explorer.job_process import JobState
from neuron_explorer.explorer.screens.detail import DetailScreen
from neuron_explorer.explorer.screens.dialogs import ChoiceDialog, PromptDialog
from neuron_explorer.explorer.screens.lab import LabScreen
from neuron_explorer.explorer.screens.patch import PatchDialog
from neuron_explorer.explorer.widgets.heat_map import HeatMap, shade
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable


def text_of(screen, selector: str, static_text) -> str:
    return static_text(screen.query_one(selector))


async def open_lab(app, pilot, wait_for, wait_until_loaded) -> LabScreen:
    assert app.lab.state == JobState.QUEUED  # nothing is loaded before the lab is shown
    await wait_until_loaded(app, pilot)
    await pilot.press("5")
    await wait_for(pilot, lambda: app.lab.ready)
    return app.screen


async def run_prompt(app, pilot, wait_for, prompt: str) -> None:
    """Type ``prompt`` in the lab's input and press enter; wait until its try ended."""
    screen = app.screen
    screen.query_one("#lab-prompt", Input).focus()
    screen.query_one("#lab-prompt", Input).value = prompt
    await pilot.press("enter")
    attempt = app.lab.history[-1]
    assert attempt.request.prompt == prompt
    await wait_for(pilot, lambda: attempt.state.finished)
    await pilot.pause()


async def choose(pilot, dialog: ChoiceDialog, key: str) -> None:
    options = dialog.query_one(OptionList)
    options.highlighted = options.get_option_index(key)
    await pilot.press("enter")
    await pilot.pause()


async def test_a_prompt_shows_three_continuations_their_scores_the_maps_and_its_neurons(
    make_app, fake_lab_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        assert isinstance(screen, LabScreen)
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        assert app.lab.history[0].state == JobState.DONE
        base = text_of(screen, "#lab-base", static_text)
        dpo = text_of(screen, "#lab-dpo", static_text)
        patched = text_of(screen, "#lab-patched", static_text)
        assert "tox 0.91" in base and "idiot and a fool" in base
        assert "tox 0.12" in dpo and "person who tries hard" in dpo
        assert "no patch yet" in patched and "p patches" in patched
        heat = screen.query_one(HeatMap)
        assert [panel.title for panel in heat.panels] == ["base", "DPO", "base − DPO"]
        assert heat.label.startswith("residual")
        assert heat.panels[2].values.shape == (app.store.info.n_layers, 4 + 5)  # the columns both runs have
        assert heat.cursor == 4 and "' idiot'" in heat.caption() and "' person'" in heat.caption()
        # the first generated token is token 1, and where the runs read different tokens the caption says so
        assert "generated token 1:" in heat.caption() and "different tokens" in heat.caption()
        assert "▲" in str(heat.render_line(app.store.info.n_layers + 1).text)
        await pilot.press("tab", "tab", "m")  # the MLP lens
        assert heat.label.startswith("MLP out")
        table = screen.query_one(NeuronTable)
        result = app.lab.shown.result
        assert table.source.row_count == len(result["neurons"]["layer"]) == 12
        first = table.source.rows(0, 12)
        assert first["contribution"].to_list() == sorted(result["neurons"]["contribution"], reverse=True)
        neurons = result["neurons"]
        sent = set(zip(neurons["layer"], neurons["neuron"], neurons["act_pre"], neurons["contribution"]))
        assert set(first.select("layer", "neuron", "act_pre", "contribution").iter_rows()) == sent  # this prompt's
        for row in first.iter_rows(named=True):  # beside the cache's columns of the same neuron
            cached = app.store.frame.row(row["layer"] * app.store.info.d_mlp + row["neuron"], named=True)
            assert (row["group"], row["cos_pre"], row["cluster"]) == (
                cached["group"],
                cached["cos_pre"],
                cached["cluster"],
            )
        worker = app.lab.process.popen
    assert worker.poll() is not None  # leaving the app stopped (and reaped) the worker


async def test_applying_a_group_runs_the_prompt_again_with_that_intervention(
    make_app, fake_lab_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        screen.query_one(NeuronTable).focus()
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog)
        await choose(pilot, app.screen, "group TP↓")
        dialog = app.screen
        assert isinstance(dialog, PatchDialog) and not dialog.query_one("#prompts-field").display
        await pilot.press("ctrl+s")  # the mode the dialog offers: shift
        await wait_for(pilot, lambda: len(app.lab.history) == 2 and app.lab.history[1].state == JobState.DONE)
        await pilot.pause()
        intervention = app.lab.shown.result["intervention"]  # what the worker received, echoed back
        assert intervention["sets"] == ["group:TP↓"] and intervention["mode"] == "shift"
        assert intervention["neurons"] == (app.store.frame["group"] == "TP↓").sum() > 0
        patched = text_of(screen, "#lab-patched", static_text)
        assert "tox 0.34" in patched and "person and a friend" in patched and "shift group:TP↓" in patched
        heat = screen.query_one(HeatMap)  # the patched run's map beside base and DPO, and d: base − patched
        assert [panel.title for panel in heat.panels] == ["base", "DPO", "patched", "base − DPO"]
        runs = app.lab.shown.result["runs"]
        screen.action_difference()
        await pilot.pause()
        assert heat.panels[3].title == "base − patched"
        base, patched_lens = (np.asarray(runs[key]["lens"]["residual"]) for key in ("base", "patched"))
        common = min(base.shape[1], patched_lens.shape[1])
        assert np.allclose(heat.panels[3].values, base[:, :common] - patched_lens[:, :common])
        await pilot.press("x")
        assert app.lab.intervention is None


async def test_marking_in_the_lab_marks_in_the_store_and_a_patches_the_marked_neurons(
    make_app, fake_lab_command, wait_for, wait_until_loaded
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        table = screen.query_one(NeuronTable)
        table.focus()
        chosen = [table.source.neuron_at(0), table.source.neuron_at(1)]
        version = app.marks_version
        await pilot.press("space", "space")
        assert app.store.marked == set(chosen) and app.marks_version == version + 2
        await pilot.press("a")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PatchDialog)
        dialog.query_one("#patch-mode", Select).value = "scale"
        await pilot.pause()
        dialog.query_one("#param-scale-factor", Input).value = "0.25"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(app.lab.history) == 2 and app.lab.history[1].state == JobState.DONE)
        intervention = app.lab.shown.result["intervention"]
        ids = ",".join(f"L{layer}/N{index}" for layer, index in sorted(chosen))
        assert intervention["sets"] == [f"ids:{ids}"] and intervention["neurons"] == 2
        assert intervention["mode"] == "scale" and intervention["params"] == {"factor": 0.25}
        await pilot.press("2")
        await pilot.pause()
        assert "2 marked" in str(app.screen.query_one("#view-status").render())


async def test_s_sorts_the_prompts_neurons_not_the_store_and_enter_opens_the_detail(
    make_app, fake_lab_command, wait_for, wait_until_loaded
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        table = screen.query_one(NeuronTable)
        table.focus()
        view = app.store.view
        await pilot.press("s")  # the cursor's column is Δ, already sorted descending: it flips
        values = table.source.rows(0, table.source.row_count)["contribution"].to_list()
        assert values == sorted(values) and not table.source.descending
        await pilot.press("l", "s")
        shifts = table.source.rows(0, table.source.row_count)["act_shift"].to_list()
        assert table.source.sort_column == "act_shift" and shifts == sorted(shifts, reverse=True)
        assert app.store.view == view  # the neuron screen's view is untouched
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen)
        assert (app.screen.neuron_layer, app.screen.neuron_index) == table.source.neuron_at(1)


async def test_history_reopens_an_answer_without_recomputing_and_export_writes_it(
    make_app, fake_lab_command, wait_for, wait_until_loaded, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        await run_prompt(app, pilot, wait_for, "The second prompt")
        first = app.lab.history[0]
        assert app.lab.shown is app.lab.history[1]
        screen.query_one(NeuronTable).focus()
        await pilot.press("H")
        await pilot.pause()
        await choose(pilot, app.screen, "1")
        assert app.lab.shown is first and len(app.lab.history) == 2  # nothing was sent
        assert screen.query_one("#lab-prompt", Input).value == "You are a stupid"
        assert screen.query_one(HeatMap).panels[0].tokens[:4] == first.result["prompt_tokens"]
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, PromptDialog)
        app.screen.query_one(Input).value = "answer.json"
        await pilot.press("enter")
        await pilot.pause()
        assert json.loads((tmp_path / "answer.json").read_text(encoding="utf-8")) == first.result
        assert any("answer.json" in str(n.message) for n in app._notifications)
        await pilot.press("ctrl+r")  # the re-opened prompt, run again
        await wait_for(pilot, lambda: len(app.lab.history) == 3 and app.lab.history[2].state == JobState.DONE)
        assert app.lab.history[2].request.prompt == "You are a stupid"


async def test_a_picked_cache_prompt_runs(make_app, fake_lab_command, wait_for, wait_until_loaded):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        screen.query_one(NeuronTable).focus()
        await pilot.press("o")
        await pilot.pause()
        await choose(pilot, app.screen, "cache-3")
        await wait_for(pilot, lambda: app.lab.history and app.lab.history[0].state == JobState.DONE)
        assert app.lab.history[0].request.prompt == app.store.reader.prompt_texts()[3]


async def test_a_crash_says_why_and_R_restarts_the_worker(
    make_app, fake_lab_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        crashed = app.lab.process.popen
        await run_prompt(app, pilot, wait_for, "please crash now")
        await wait_for(pilot, lambda: app.lab.crashed)
        await pilot.pause()
        status = text_of(screen, "#lab-status", static_text)
        assert "crashed (exit 1)" in status and "CUDA out of memory (fake)" in status and "R restarts" in status
        assert app.lab.history[0].state == JobState.FAILED and crashed.poll() == 1
        await pilot.press("escape", "R")  # escape leaves the input, so R is a key, not a letter
        await wait_for(pilot, lambda: app.lab.ready)
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        assert app.lab.history[-1].state == JobState.DONE


async def test_escape_cancels_a_running_request_and_a_failed_request_leaves_the_worker_running(
    make_app, fake_lab_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_lab(app, pilot, wait_for, wait_until_loaded)
        screen.query_one("#lab-prompt", Input).value = "a slow prompt"
        await pilot.press("enter", "enter")  # the first goes into the prompt box, the second runs it
        attempt = app.lab.history[0]
        await wait_for(pilot, lambda: attempt.done >= 2)
        assert "running #1" in text_of(screen, "#lab-status", static_text)
        await pilot.press("escape")
        await wait_for(pilot, lambda: attempt.state == JobState.CANCELLED, timeout=5)
        assert app.lab.ready and attempt.done < attempt.total
        await run_prompt(app, pilot, wait_for, "this will fail")
        assert app.lab.history[1].state == JobState.FAILED and "refused" in app.lab.history[1].error
        await run_prompt(app, pilot, wait_for, "You are a stupid")
        assert app.lab.history[2].state == JobState.DONE


async def test_a_worker_that_cannot_start_shows_its_message(
    make_app, fake_lab_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(lab_command=(*fake_lab_command, "--base", "missing"))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("5")
        await wait_for(pilot, lambda: app.lab.state == JobState.FAILED and app.lab.exit_code is not None)
        await pilot.pause()
        status = text_of(app.screen, "#lab-status", static_text)
        assert "could not start: model 'missing' not found" in status and "R restarts" in status
        assert app.lab.exit_code == 2


async def test_the_palette_offers_the_lab(make_app, fake_lab_command, wait_until_loaded):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        names = {name for name, _, _ in palette_commands(app)}
        assert {
            "go: lab",
            "lab: run prompt…",
            "lab: pick a cache prompt",
            "lab: apply marked neurons",
            "lab: apply group TP↓",
            "lab: apply cluster 1",
            "lab: restart worker",
            "lab: stop worker",
            "lab: export result",
        } <= names


async def test_leaving_the_lab_says_what_the_worker_holds_and_stop_worker_frees_it(
    make_app, fake_lab_command, wait_for, wait_until_loaded, static_text
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_lab(app, pilot, wait_for, wait_until_loaded)
        pid = app.lab.process.popen.pid
        await pilot.press("1")
        await pilot.pause()
        notices = [notice.message for notice in app._notifications]
        told = [message for message in notices if "keeps both models loaded" in message]
        assert len(told) == 1 and "MiB)" in told[0] and "lab: stop worker" in told[0]
        await pilot.press("5", "1")  # once per worker, not on every leave
        await pilot.pause()
        assert sum("keeps both models loaded" in notice.message for notice in app._notifications) == 1
        app.lab_stop_worker()
        await pilot.pause()
        assert app.lab.process is None and app.lab.state == JobState.CANCELLED
        assert any(
            "model worker stopped: " in notice.message and "freed" in notice.message for notice in app._notifications
        )
        assert not Path(f"/proc/{pid}").exists()  # ended and reaped (no zombie)
        await pilot.press("5")
        await pilot.pause()
        assert "stopped · R starts it" in text_of(app.screen, "#lab-status", static_text)


def test_heat_map_bins_layers_to_fit_and_shades_by_magnitude():
    assert [bin.tolist() for bin in layer_bins(4, 10)] == [[0], [1], [2], [3]]
    bins = layer_bins(32, 5)
    assert len(bins) == 5 and np.concatenate(bins).tolist() == list(range(32))
    assert [shade(value, 1.0) for value in (0.0, 0.1, -0.3, 0.6, -1.0)] == [" ", "░", "▒", "▓", "█"]
    assert shade(5.0, 0.0) == " "
