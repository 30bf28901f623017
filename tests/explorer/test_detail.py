"""The neuron detail: next/previous neuron of the table's view, the stored runs that patched the neuron, and its
per-token activations on its top prompts (from the lab's model worker: a stand-in here)."""

from __future__ import annotations

import json

import h5py

from neuron_explorer.cache import annotations, layout
from neuron_explorer.cache.reader import neuron_id
from neuron_explorer.explorer.job_process import JobState
from neuron_explorer.explorer.screens.detail import TOP_PROMPTS, DetailScreen, examples_text, most_shifted, shade
from neuron_explorer.explorer.widgets.neuron_table import NeuronTable


async def test_brackets_step_through_the_views_neurons_and_the_table_follows(make_app, wait_until_loaded, static_text):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("plus", "enter")  # Δ > 0 only, sorted by Δ: the view's order is the store's
        await wait_until_loaded(app, pilot)
        assert isinstance(app.screen, DetailScreen)
        second = app.store.neuron_at(1)
        await pilot.press("right_square_bracket")
        await wait_until_loaded(app, pilot)
        assert (app.screen.neuron_layer, app.screen.neuron_index) == second
        assert static_text(app.screen.query_one("#detail-headline")).startswith(neuron_id(*second))
        await pilot.press("left_square_bracket", "left_square_bracket")  # the first has no previous: a message
        await wait_until_loaded(app, pilot)
        assert (app.screen.neuron_layer, app.screen.neuron_index) == app.store.neuron_at(0)
        await pilot.press("n", "escape")
        await pilot.pause()
        assert app.screen.query_one(NeuronTable).current_neuron() == second


async def test_the_detail_lists_the_stored_runs_that_patched_the_neuron(
    cache_path, make_app, wait_until_loaded, static_text
):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        layer, index = app.store.neuron_at(0)
        annotations.save_run(
            cache_path,
            {"label": "with it", "mode": "shift", "neurons": {str(layer): [index, 63]}},
            {"toxicity": 0.2, "recovered": 0.25, "neurons": 2},
            [],
            label="with",
        )
        annotations.save_run(
            cache_path,
            {"label": "without it", "mode": "shift", "neurons": {str(layer): [i for i in range(64) if i != index]}},
            {"toxicity": 0.3, "recovered": 0.0, "neurons": 63},
            [],
            label="without",
        )
        await pilot.press("enter")
        await wait_until_loaded(app, pilot)
        history = static_text(app.screen.query_one("#detail-history"))
        assert "with it" in history and "25.0%" in history and "without it" not in history


async def test_t_reads_the_top_prompts_per_token_in_the_lab_worker_and_shades_the_read_positions(
    make_app, fake_lab_command, wait_for, open_first_detail, static_text
):
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_first_detail(app, pilot)
        neuron = (screen.neuron_layer, screen.neuron_index)
        assert "t: the activation at every token" in static_text(screen.query_one("#detail-examples"))
        assert app.lab.state == JobState.QUEUED  # nothing loads a model before the user asks
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.lab.examples.get(neuron), dict))
        await pilot.pause()
        answer = app.lab.examples[neuron]
        prompts = app.store.reader.prompt_activations(*neuron)
        expected = most_shifted(prompts)["prompt"].to_list()
        assert [example["prompt"] for example in answer["examples"]] == expected and len(expected) == TOP_PROMPTS
        shown = static_text(screen.query_one("#detail-examples"))
        assert all(f"#{index}" in shown for index in expected) and "│ idiot" in shown
        # the next neuron is asked for at once: the worker is loaded now (and runs on: no wait_until_loaded)
        await pilot.press("n")

        def following() -> tuple[int, int]:
            return screen.neuron_layer, screen.neuron_index

        await wait_for(pilot, lambda: following() != neuron and isinstance(app.lab.examples.get(following()), dict))
        await pilot.pause()
        assert "#" in static_text(screen.query_one("#detail-examples"))


def test_examples_shade_only_the_read_positions_on_one_scale():
    row = {"tokens": ["a", " b", " c"], "prompt_length": 1, "read": [False, True, True], "mean": 0.0, "stored": None}
    answer = {
        "positions": "generated",
        "examples": [{"prompt": 4, "base": {**row, "acts": [9.0, 2.0, -1.0]}, "dpo": {**row, "acts": [9.0, 0.5, 0.0]}}],
    }
    text = examples_text(answer)
    styles = {text.plain[span.start : span.end]: str(span.style) for span in text.spans}
    assert "scale: full colour at |a| = 2" in text.plain  # the unread 9.0 does not set the scale
    assert styles["a"] == "dim"
    assert shade(2.0, 2.0) == "bold white on rgb(255,140,0)" and shade(-1.0, 2.0) == "white on rgb(20,55,128)"
    assert shade(0.0, 2.0).endswith("rgb(0,0,0)")


async def test_t_brings_the_value_vector_tokens_that_compute_left_out(
    cache_path, make_app, fake_lab_command, wait_for, open_first_detail, static_text
):
    with h5py.File(cache_path, "r+") as handle:  # as `compute --lens auto` leaves a neuron out of its top ranks
        for name in ("top_tokens_pre", "bottom_tokens_pre", "top_tokens_dpo", "bottom_tokens_dpo"):
            handle[layout.neuron_path(name)][...] = -1
        handle[layout.NEURONS].attrs[layout.LENS_RULE] = json.dumps(
            {"rule": "top", "top_n": 1, "by": "|Δ|, |δ| and |cos|", "computed": 0}
        )
    app = make_app(lab_command=fake_lab_command)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_first_detail(app, pilot)
        assert "t computes them in the lab's model worker" in static_text(screen.query_one("#detail-tokens"))
        await pilot.press("t")
        neuron = (screen.neuron_layer, screen.neuron_index)
        await wait_for(pilot, lambda: isinstance(app.lab.examples.get(neuron), dict))
        await pilot.pause()
        shown = static_text(screen.query_one("#detail-tokens"))
        assert "base-up0 +3.00" in shown and "dpo-down0 -3.00" in shown
