"""The model worker: requests in, job events out, in order; cancelling; bad lines; and the real entry point."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

from neuron_explorer.engine.lab.protocol import CancelRequest, ExamplesRequest, QuitRequest, RunRequest, parse_request
from neuron_explorer.engine.lab.session import LabSession
from neuron_explorer.engine.lab.worker import serve
from neuron_explorer.errors import UserError
from neuron_explorer.events import Answer, Cancelled, Failed, Progress, Ready, from_json
from neuron_explorer.spec.intervention import Intervention, Positions


@pytest.fixture(scope="module")
def session(tiny_cache):
    with LabSession(tiny_cache, device="cpu", dtype="float32") as opened:
        yield opened


class Lines:
    """stdin for `serve`: lines put from the test while the worker runs; None ends the input."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def put(self, line: str | None) -> None:
        self.queue.put(line)

    def __iter__(self):
        while (line := self.queue.get()) is not None:
            yield line


def run_worker(session, lines: Lines) -> tuple[threading.Thread, queue.Queue]:
    events: queue.Queue = queue.Queue()
    thread = threading.Thread(target=serve, args=(session, lines, events.put), daemon=True)
    thread.start()
    return thread, events


def next_of(events: queue.Queue, kinds: tuple[type, ...], timeout: float = 60.0):
    """The next event of one of `kinds` (progress in between is skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(event, kinds):
            return event


def test_requests_are_answered_in_order_and_bad_lines_fail_alone(session):
    lines = Lines()
    thread, events = run_worker(session, lines)
    assert isinstance(next_of(events, (Ready,)), Ready)
    lines.put("this is not json\n")
    lines.put(RunRequest(1, "You are a stupid").to_json())
    lines.put(
        json.dumps(
            {"request": "run", "id": 2, "prompt": "x", "intervention": {"mode": "scale", "sets": ["group:nope"]}}
        )
    )
    lines.put(RunRequest(3, "The river runs", Intervention("zero-ablate", ("layer:0",))).to_json())
    lines.put(json.dumps({"request": "run", "id": 4, "prompt": "x", "intervention": {"mode": "no-such-mode"}}))
    lines.put(ExamplesRequest(5, 0, 1, (1, 0)).to_json())
    lines.put(ExamplesRequest(6, 0, 1, (999,)).to_json())
    lines.put(QuitRequest().to_json())
    outcomes = [next_of(events, (Answer, Failed, Cancelled)) for _ in range(7)]
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcomes[0], Failed) and "not JSON" in outcomes[0].message and outcomes[0].request is None
    assert isinstance(outcomes[1], Answer) and outcomes[1].request == 1
    assert set(outcomes[1].result["runs"]) == {"base", "dpo"}
    assert isinstance(outcomes[2], Failed) and "group" in outcomes[2].message
    assert outcomes[2].request == 2  # the app knows which request failed (issue #20)
    assert isinstance(outcomes[3], Answer) and outcomes[3].request == 3
    assert outcomes[3].result["intervention"]["mode"] == "zero-ablate"
    assert isinstance(outcomes[4], Failed) and "unknown mode" in outcomes[4].message and outcomes[4].request == 4
    json.dumps(outcomes[3].result)  # what the worker prints must be plain JSON
    assert isinstance(outcomes[5], Answer) and outcomes[5].request == 5
    assert [example["prompt"] for example in outcomes[5].result["examples"]] == [1, 0]
    assert set(outcomes[5].result["examples"][0]) == {"prompt", "text", "base", "dpo"}
    assert isinstance(outcomes[6], Failed) and "no prompt 999" in outcomes[6].message and outcomes[6].request == 6
    json.dumps(outcomes[5].result)


def test_a_cancel_stops_the_running_request_and_skips_a_queued_one(session, monkeypatch):
    """The running request stops at its next forward call; a queued request cancelled before its turn never runs;
    the worker then answers the next one."""
    started = threading.Event()
    real_answer = LabSession.answer

    def slow_answer(self, request, report=None, cancelled=None):
        started.set()
        if request.prompt == "slow":
            assert cancelled.wait(30), "the cancel never reached the running request"
        return real_answer(self, request, report=report, cancelled=cancelled)

    monkeypatch.setattr(LabSession, "answer", slow_answer)
    lines = Lines()
    thread, events = run_worker(session, lines)
    next_of(events, (Ready,))
    lines.put(RunRequest(1, "slow").to_json())
    lines.put(RunRequest(2, "queued").to_json())
    lines.put(RunRequest(3, "I hate you").to_json())
    assert started.wait(30)
    lines.put(CancelRequest(2).to_json())
    lines.put(CancelRequest(1).to_json())
    outcomes = [next_of(events, (Answer, Failed, Cancelled)) for _ in range(3)]
    lines.put(None)
    thread.join(30)
    assert isinstance(outcomes[0], Cancelled)
    assert isinstance(outcomes[1], Cancelled)
    assert isinstance(outcomes[2], Answer) and outcomes[2].request == 3


@pytest.mark.parametrize(
    "line,message",
    [
        ("[1, 2]", "not a JSON object"),
        ('{"request": "dance"}', "unknown lab request"),
        ('{"request": "run", "prompt": "x"}', "integer id"),
        ('{"request": "run", "id": 1, "prompt": "  "}', "non-empty prompt"),
        ('{"request": "run", "id": 1, "prompt": "x", "colour": "red"}', "takes no colour"),
        ('{"request": "run", "id": 1, "prompt": "x", "sets": ["group:TP↓"]}', "takes no sets"),
        ('{"request": "run", "id": 1, "prompt": "x", "intervention": {"mode": "shift", "sets": "group:TP↓"}}', "list"),
        ('{"request": "run", "id": 1, "prompt": "x", "intervention": "shift"}', "must be an object"),
        ('{"request": "run", "id": 1, "prompt": "x", "top": 0}', "positive integer"),
        ('{"request": "examples", "id": 1, "layer": 0, "neuron": 1, "prompts": []}', "non-empty list of prompt"),
        ('{"request": "examples", "id": 1, "layer": -1, "neuron": 1, "prompts": [0]}', "layer and a neuron"),
        ('{"request": "examples", "id": 1, "layer": 0, "neuron": 1, "prompts": [0], "top": 3}', "takes no top"),
    ],
)
def test_a_malformed_request_line_is_one_clear_error(line, message):
    with pytest.raises(UserError, match=message):
        parse_request(line)


def test_requests_survive_their_round_trip():
    request = RunRequest(
        4,
        "Tu es un idiot ∪ ā",
        Intervention("scale", ("group:TP↓", "ids:L1/N2"), Positions.NEWEST, {"factor": 0.5}, label="ā"),
        top=7,
        full=True,
    )
    assert parse_request(request.to_json()) == request
    assert parse_request(RunRequest(5, "plain").to_json()) == RunRequest(5, "plain")
    assert parse_request(CancelRequest(4).to_json()) == CancelRequest(4)
    assert parse_request(ExamplesRequest(6, 2, 9, (3, 1)).to_json()) == ExamplesRequest(6, 2, 9, (3, 1))
    assert parse_request(QuitRequest().to_json()) == QuitRequest()


@pytest.mark.slow
def test_the_worker_through_the_real_entry_point(tiny_cache, tmp_path):
    """`python -m neuron_explorer lab FILE --serve`: loading progress, ready, an answer, a clean exit on quit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "neuron_explorer", "lab", str(tiny_cache), "--serve", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    request = RunRequest(1, "You pathetic loser", Intervention("shift", ("group:TP↓",)))
    process.stdin.write(request.to_json() + "\n")
    process.stdin.write(QuitRequest().to_json() + "\n")
    process.stdin.flush()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    events = [from_json(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [type(event) for event in events]
    assert kinds.index(Progress) < kinds.index(Ready) < kinds.index(Answer)
    answer = next(event for event in events if isinstance(event, Answer))
    assert answer.request == 1 and set(answer.result["runs"]) == {"base", "dpo", "patched"}


@pytest.mark.slow
def test_a_worker_whose_model_is_missing_says_so_and_exits(pairs, compute_cache, tmp_path):
    """The cache names a model folder that is gone: one `failed` event that names it, exit code 2, no traceback."""
    base, tuned = pairs["llama"]
    moved = tmp_path / "base-copy"
    shutil.copytree(base, moved)
    cache = compute_cache(moved, tuned, "lab-missing.h5")
    shutil.rmtree(moved)
    process = subprocess.run(
        [sys.executable, "-m", "neuron_explorer", "lab", str(cache), "--serve"],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.returncode == 2
    events = [from_json(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert isinstance(events[-1], Failed) and str(moved) in events[-1].message
    assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_the_lab_command_prints_tables_and_writes_json(tiny_cache, tmp_path):
    target = tmp_path / "lab.json"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_explorer",
            "lab",
            str(tiny_cache),
            "--prompt",
            "Get lost, you fool",
            "--set",
            "group:TP↓",
            "--mode",
            "scale",
            "--factor",
            "0",
            "--json",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"},
    )
    assert process.returncode == 0, process.stderr
    for text in ("continuations", "base", "dpo", "patched", "top neurons by Δ", "residual stream"):
        assert text in process.stdout
    result = json.loads(target.read_text())
    assert result["intervention"]["params"] == {"factor": 0.0}
    assert len(result["full"]["act_pre"]) == 3  # every neuron of every layer with --json
