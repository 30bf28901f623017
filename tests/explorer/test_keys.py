"""Keys and focus that never trap: the lab opens with the keys working (typing starts with enter or i), F1 opens help
even where ? types, / jumps to a neuron from any screen, q asks first while a patch run is running."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from textual.widgets import Footer, Input

from neuron_explorer.explorer.lab_client import format_bytes
from neuron_explorer.explorer.screens.dialogs import ConfirmDialog, PromptDialog
from neuron_explorer.explorer.screens.help import HelpScreen
from neuron_explorer.explorer.screens.neurons import NeuronsScreen
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable


async def test_the_lab_opens_with_the_keys_working_and_enter_or_i_starts_typing(
    make_app, fake_lab_command, wait_for, wait_until_loaded
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("5")
        await pilot.pause()
        prompt = app.screen.query_one("#lab-prompt", Input)
        assert not prompt.has_focus
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("i")
        await pilot.pause()
        assert prompt.has_focus and prompt.value == ""  # the i was not typed
        await pilot.press(*"q?1")
        assert prompt.value == "q?1" and app.current_mode == "lab"  # in the box, keys are text
        await pilot.press("f1")  # F1 is help where ? types
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        await pilot.press("escape")  # leaves the box: the table has the focus
        await pilot.pause()
        assert isinstance(app.screen.focused, NeuronTable)
        app.screen.set_focus(None)
        await pilot.press("enter")
        await pilot.pause()
        assert prompt.has_focus
        await pilot.press("escape", "2")
        await pilot.pause()
        assert app.current_mode == "neurons"


@pytest.mark.parametrize("screen", ["1", "3", "4", "5"])
async def test_slash_jumps_to_a_neuron_from_any_screen(make_app, fake_lab_command, wait_until_loaded, screen):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press(screen)
        await pilot.pause()
        await pilot.press("slash")
        await pilot.pause()
        assert isinstance(app.screen, PromptDialog)
        await pilot.press(*"L2/N25", "enter")
        await pilot.pause()
        assert isinstance(app.screen, NeuronsScreen)
        table = app.screen.query_one(NeuronTable)
        assert table.current_neuron() == (2, 25)


async def test_q_asks_first_while_a_patch_run_is_running(make_app, fake_patch_command, wait_for, wait_until_loaded):
    app = make_app(patch_command=fake_patch_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        app.action_patch("group TP↓")
        await pilot.pause()
        app.screen.request = replace(app.screen.request, target="slow run")  # the label names it: the fake job is slow
        await pilot.press("ctrl+s")
        job = app.jobs[0]
        await wait_for(pilot, lambda: job.done >= 1)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and "slow run" in str(app.screen.question)
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and job.state == "running"
        await pilot.press("q", "y")
        await pilot.pause()
        assert not app.is_running or app._exit
    assert job.process.returncode is not None  # leaving the app stopped the run and waited for it


async def test_typing_filters_a_choice_list_and_enter_takes_the_first_left(make_app, wait_until_loaded):
    from neuron_explorer.explorer.screens.dialogs import ChoiceDialog

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        answers = []
        choices = [(f"cache  Synthetic prompt number {n} that starts", f"cache-{n}") for n in range(24)]
        app.push_screen(ChoiceDialog("Run a prompt", choices), answers.append)
        await pilot.pause()
        await pilot.press(*"number 17")
        await pilot.pause()
        shown = app.screen.query_one("#choices")
        assert [shown.get_option_at_index(i).id for i in range(shown.option_count)] == ["cache-17"]
        await pilot.press("enter")
        await pilot.pause()
        assert answers == ["cache-17"]


async def test_the_lab_says_how_much_memory_its_worker_holds(make_app, fake_lab_command, wait_for, wait_until_loaded):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press("5")
        await wait_for(pilot, lambda: app.lab.ready)
        with open(f"/proc/{app.lab.process.popen.pid}/statm") as statm:  # pages, read another way than VmRSS
            resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert abs(app.lab.worker_memory() - resident) < 8 * 2**20
        assert f"its memory {format_bytes(app.lab.worker_memory())}" in app.lab.status()


@pytest.mark.parametrize("keys", [("1",), ("2",), ("2", "enter"), ("3",), ("4",), ("5",), ("6",)])
async def test_every_footer_fits_80_columns(make_app, fake_lab_command, wait_until_loaded, keys):
    """Nothing of a screen's footer is cut at 80×24 (the palette entry at the right end included)."""
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until_loaded(app, pilot)
        await pilot.press(*keys)
        await pilot.pause()
        footer = app.screen.query_one(Footer)
        # the footer scrolls sideways when its keys (margins included) are wider than the screen
        used = footer.virtual_size.width
        assert 0 < used <= footer.size.width, f"{used} columns of footer in {footer.size.width}"
