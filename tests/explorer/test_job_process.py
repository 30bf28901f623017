"""`JobProcess`, the one reader of the explorer's child processes, on tiny `python -c` children: what it posts, and
that every process ends with exactly one terminal event."""

from __future__ import annotations

import sys
import threading
import time

from neuron_explorer.events import Cancelled, Done, Failed, Message, Progress, to_json
from neuron_explorer.explorer import job_process
from neuron_explorer.explorer.job_process import JobProcess, JobState


def child(*lines: str) -> list[str]:
    """A Python child that runs `lines` after importing the events."""
    return [sys.executable, "-c", "\n".join(["import sys, time", "from neuron_explorer.events import *", *lines])]


def say(event) -> str:
    return f"print({to_json(event)!r}, flush=True)"


def run(argv: list[str], **options) -> tuple[JobProcess, list]:
    posted: list = []
    process = JobProcess(argv, posted.append, **options)
    process.start()
    process.follow()
    return process, posted


def finals(posted: list) -> list:
    return [message.event for message in posted if message.final]


def test_events_come_through_and_stray_lines_are_skipped_but_kept():
    process, posted = run(
        child(
            "print('a library talks', flush=True)",
            say(Progress("run", 1, 2)),
            'print(\'{"not": "an event"}\', flush=True)',
            say(Message("half way")),
            say(Done("all stored")),
        )
    )
    assert [message.event for message in posted] == [Progress("run", 1, 2), Message("half way"), Done("all stored")]
    assert [message.final for message in posted] == [False, False, True]
    assert all(message.process is process for message in posted)
    assert list(process.tail) == ["a library talks", '{"not": "an event"}']
    assert process.returncode == 0


def test_bytes_that_are_not_utf8_do_not_stop_the_reader():
    _, posted = run(
        child("sys.stdout.buffer.write(bytes([255, 254]) + b' progress bar\\n')", "sys.stdout.flush()", say(Done()))
    )
    assert [message.event for message in posted] == [Done()]


def test_a_child_that_dies_without_a_terminal_event_gives_one_failed_with_its_stderr():
    process, posted = run(
        child(
            say(Progress("run", 1, 2)),
            "print('chatter', flush=True)",
            "print('Traceback (most recent call last):', file=sys.stderr)",
            "print('RuntimeError: CUDA out of memory', file=sys.stderr)",
            "sys.exit(3)",
        )
    )
    assert finals(posted) == [Failed("RuntimeError: CUDA out of memory")] and posted[-1].final
    assert process.returncode == 3


def test_a_silent_crash_says_its_exit_code_and_a_clean_exit_without_done_is_no_success():
    _, posted = run(child("sys.exit(4)"), what="the run")
    assert finals(posted) == [Failed("the run exited with code 4")]
    _, posted = run(child("print('finished, I think', flush=True)"), what="the run")
    assert finals(posted) == [Failed("the run exited without saying it finished: finished, I think")]


def test_the_command_lines_error_prefix_is_dropped():
    _, posted = run(child("print('neuron-explorer: error: no such set: group:XX', file=sys.stderr)", "sys.exit(2)"))
    assert finals(posted) == [Failed("no such set: group:XX")]


def test_done_then_a_nonzero_exit_is_one_done():
    """The child's word stands: what it reported done was stored atomically before it said so, and a crash while it
    shuts down takes nothing back. Its exit code stays readable."""
    process, posted = run(
        child(say(Done("stored")), say(Progress("late", 1, 1)), say(Failed("teardown")), "sys.exit(1)")
    )
    assert [message.event for message in posted] == [Done("stored")] and posted[0].final
    assert process.returncode == 1


def test_cancel_gives_one_cancelled():
    posted: list = []
    process = JobProcess(child(say(Progress("run", 1, 100)), "time.sleep(30)", say(Done())), posted.append)
    assert process.start()
    reader = threading.Thread(target=process.follow)
    reader.start()
    deadline = time.monotonic() + 10
    while not posted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.cancel()
    reader.join(10)
    assert not reader.is_alive()
    assert [message.event for message in posted] == [Progress("run", 1, 100), Cancelled()] and posted[-1].final
    assert not process.cancel()  # it has ended: nothing to cancel, nothing more posted
    assert len(posted) == 2


def test_a_child_that_ignores_terminate_is_killed(monkeypatch):
    monkeypatch.setattr(job_process, "KILL_GRACE", 0.3)
    posted: list = []
    process = JobProcess(
        child(
            "import signal", "signal.signal(signal.SIGTERM, signal.SIG_IGN)", say(Message("stubborn")), "time.sleep(30)"
        ),
        posted.append,
    )
    process.start()
    reader = threading.Thread(target=process.follow)
    reader.start()
    while not posted:
        time.sleep(0.02)
    started = time.monotonic()
    assert process.cancel()
    reader.join(10)
    assert time.monotonic() - started < 5 and process.returncode == -9
    assert finals(posted) == [Cancelled()]


def test_a_worker_that_serves_requests_ends_only_with_its_exit():
    process, posted = run(
        child(
            say(Failed("request 1: refused")),
            say(Cancelled()),
            say(Done()),
            "print('killed by the OOM killer', file=sys.stderr)",
            "sys.exit(137)",
        ),
        serves_requests=True,
        what="the model worker",
    )
    assert [(message.event, message.final) for message in posted] == [
        (Failed("request 1: refused"), False),
        (Cancelled(), False),
        (Done(), False),
        (Failed("killed by the OOM killer"), True),
    ]
    assert process.returncode == 137


def test_a_worker_reads_what_is_sent_and_stop_is_one_cancelled():
    posted: list = []
    process = JobProcess(
        child("for line in sys.stdin:", f"    print({to_json(Message('got'))!r}, flush=True)", "time.sleep(0.2)"),
        posted.append,
        serves_requests=True,
    )
    process.start()
    reader = threading.Thread(target=process.follow)
    reader.start()
    process.send("hello")
    while not posted:
        time.sleep(0.02)
    process.stop(grace=5)  # closing stdin ends its loop: it leaves on its own
    reader.join(10)
    assert [message.event for message in posted] == [Message("got"), Cancelled()] and posted[-1].final
    assert process.returncode == 0


def test_a_command_that_cannot_start_gives_one_failed():
    posted: list = []
    process = JobProcess(["/nonexistent/neuron-explorer"], posted.append, what="the build")
    assert not process.start()
    process.follow()
    assert not process.cancel()
    assert len(posted) == 1 and posted[0].final
    assert posted[0].event.message.startswith("could not start the build:")


def test_job_states():
    assert [state for state in JobState if state.finished] == [JobState.DONE, JobState.FAILED, JobState.CANCELLED]
    assert JobState.ended_by(Done()) == JobState.DONE and JobState.ended_by(Cancelled()) == JobState.CANCELLED
    assert JobState.ended_by(Failed("x")) == "failed"  # a str: it reads as its value in the status lines
