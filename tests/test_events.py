"""Job events: the JSON lines the explorer reads, the progress a tracker reports, and how the CLI renders them."""

from __future__ import annotations

import json

import pytest

from neuron_explorer import events
from neuron_explorer.commands.reporting import _Bars, reporting
from neuron_explorer.errors import UserError
from neuron_explorer.events import (
    Answer,
    Cancelled,
    Done,
    EventError,
    Failed,
    Message,
    Progress,
    Ready,
    Stored,
    Tracker,
    from_json,
    to_json,
)

# Written by hand, as another program would write them: each line and the event it must read as.
HAND_WRITTEN = [
    (
        '{"event": "progress", "stage": "base: toxicity", "done": 3, "total": 10, "elapsed": 1.5, "eta": 3.5}',
        Progress("base: toxicity", 3, 10, 1.5, 3.5),
    ),
    ('{"event": "progress", "stage": "", "done": 0, "total": 7}', Progress("", 0, 7, 0.0, None)),
    ('{"event": "message", "text": "loading the base model"}', Message("loading the base model", "info")),
    (
        '{"event": "message", "text": "3 prompts are statistics prompts", "level": "warning"}',
        Message("3 prompts are statistics prompts", "warning"),
    ),
    (
        '{"event": "stored", "kind": "run", "name": "patch-TP-1a2b", "label": "patch TP↓", '
        '"metrics": {"toxicity": 0.25}}',
        Stored("run", "patch-TP-1a2b", "", "patch TP↓", {"toxicity": 0.25}),
    ),
    ('{"event": "done", "summary": "| base |"}', Done("| base |")),
    ('{"event": "done"}', Done("")),
    ('{"event": "failed", "message": "no such file"}', Failed("no such file")),
    ('{"event": "cancelled"}', Cancelled()),
    ('{"event": "ready", "text": "both models loaded", "seconds": 3.2}', Ready("both models loaded", 3.2)),
    (
        '{"event": "answer", "request": 7, "result": {"runs": {"base": {"toxicity": 0.5}}}}',
        Answer(7, {"runs": {"base": {"toxicity": 0.5}}}),
    ),
]

EVERY_TYPE = [
    Progress("dpo: F1 ↓", 41, 96, 12.3, None),
    Progress("x", 1, 2, 0.1, 0.1),
    Message("warning: ∪ and ā", "warning"),
    Stored("cache", "default.h5", "/tmp/default.h5"),
    Stored("run", "id", label="patch all four ↓ groups", metrics={"recovered": -0.125, "neurons": 7}),
    Done("| a | b |\n|---|---|"),
    Failed("ValueError: bad"),
    Cancelled(),
    Ready("loaded", 1.5),
    Answer(3, {"prompt": "ā ∪", "lens": [[0.5, -1.0]]}),
]


@pytest.mark.parametrize("line,event", HAND_WRITTEN)
def test_hand_written_lines_read_as_their_events(line, event):
    assert from_json(line) == event


def test_every_event_type_survives_the_round_trip():
    assert {type(event) for event in EVERY_TYPE} == set(events.EVENT_TYPES.values())
    for event in EVERY_TYPE:
        line = to_json(event)
        assert "\n" not in line and from_json(line) == event and type(from_json(line)) is type(event)
    assert "↓" in to_json(EVERY_TYPE[0])  # readable, not \u escapes


def test_serialized_fields_are_the_documented_ones():
    assert json.loads(to_json(Progress("s", 1, 4, 2.0, 6.0))) == {
        "event": "progress",
        "stage": "s",
        "done": 1,
        "total": 4,
        "elapsed": 2.0,
        "eta": 6.0,
    }
    assert json.loads(to_json(Failed("x"))) == {"event": "failed", "message": "x", "request": None}
    assert json.loads(to_json(Failed("x", request=3))) == {"event": "failed", "message": "x", "request": 3}


@pytest.mark.parametrize(
    "line,says",
    [
        ("loading weights 50%", "not JSON"),
        ("", "not JSON"),
        ('["progress", 1]', "not a JSON object"),
        ('{"stage": "x", "done": 1, "total": 2}', "unknown event None"),
        ('{"event": "error", "message": "old protocol"}', "unknown event 'error'"),
        ('{"event": "progress", "stage": "x", "done": 1}', "missing 1 required positional argument: 'total'"),
        ('{"event": "failed", "message": "x", "code": 2}', "unknown fields code"),
    ],
)
def test_a_line_that_is_not_an_event_is_a_clear_error(line, says):
    with pytest.raises(EventError, match="not a") as error:
        from_json(line)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_the_tracker_reports_elapsed_time_and_eta_from_the_rate_so_far(monkeypatch):
    clock = iter([100.0, 100.0, 104.0, 110.0])  # start, plan, first advance, second advance
    monkeypatch.setattr(events.time, "perf_counter", lambda: next(clock))
    seen = []
    tracker = Tracker(seen.append)
    tracker.plan(10)
    tracker.advance(2, "base: toxicity")  # 2 units in 4 s: 0.5 units/s, 8 left
    tracker.advance(3)  # 5 units in 10 s, 5 left
    assert seen == [
        Progress("", 0, 10, 0.0, None),
        Progress("base: toxicity", 2, 10, 4.0, 16.0),
        Progress("base: toxicity", 5, 10, 10.0, 10.0),
    ]


def test_a_tracker_with_a_total_reports_at_once():
    seen = []
    Tracker(seen.append, "recording", 5)
    assert [(e.stage, e.done, e.total) for e in seen] == [("recording", 0, 5)]


def test_json_lines_end_with_failed_when_the_command_fails(capsys):
    with pytest.raises(UserError):
        with reporting(json_lines=True) as report:
            report(Message("loading"))
            raise UserError("no such file: x.h5: check the path")
    lines = capsys.readouterr().out.splitlines()
    assert [from_json(line) for line in lines] == [Message("loading"), Failed("no such file: x.h5: check the path")]
    with pytest.raises(KeyError):
        with reporting(json_lines=True):
            raise KeyError("act_pre")
    assert from_json(capsys.readouterr().out) == Failed("KeyError: 'act_pre'")


def test_bars_start_a_new_bar_per_count_and_print_the_summary_after_them(capsys):
    with _Bars() as bars:
        for event in [
            Progress("recording base", 0, 4),
            Progress("recording base", 4, 4),
            Progress("recording tuned", 2, 4),
            Progress("recording tuned", 4, 4),  # after a full bar
            Progress("identity check", 1, 3),  # after a full bar
            Progress("base: toxicity", 0, 9),
            Progress("base: perplexity", 5, 9),  # count went back
            Progress("dpo: F1", 7, 9),
        ]:  # the same count goes on: the same bar, a new description
            bars.show(event)
        bars.show(Done("| table |"))
        tasks = bars.bars.tasks
        assert [(t.description, t.completed, t.total) for t in tasks] == [
            ("recording base", 4, 4),
            ("recording tuned", 4, 4),
            ("identity check", 1, 3),
            ("dpo: F1", 7, 9),
        ]
        assert capsys.readouterr().out == ""
    assert capsys.readouterr().out == "| table |\n"


def test_bars_that_never_started_write_nothing(capsys):
    with _Bars():
        pass
    assert capsys.readouterr() == ("", "")
