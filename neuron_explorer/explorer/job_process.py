"""One child process of the explorer (a patch run, the build, the lab's model worker), read one way.

`JobProcess` starts the command, reads one job event per line of its stdout (`neuron_explorer.events`) and posts each
as a `JobEvent` message. Every process ends with exactly one terminal event (`Done`, `Failed` or `Cancelled`, marked
`final`), posted after the child has exited, so its exit code is known and its resources are free by then:
- the child's own terminal event, if it said one (the first it said): its word stands even if it then exits
  non-zero (a run it reported `Done` was stored atomically; a crash while the interpreter shuts down takes nothing
  back);
- otherwise `Cancelled` when it was cancelled here, else `Failed` with its exit code and the last lines it wrote.
A long-lived worker (`serves_requests`, the lab's) answers many requests: its `Failed` and `Cancelled` are about one
request and pass through as they come; only its exit ends the process.

Lines that are not events are a library's output: skipped, but the last few (and stderr's) are kept for the failure
message. Cancelling terminates the child's process group, then kills it if it is still there `KILL_GRACE` later.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence

from neuron_explorer.events import Cancelled, Done, Event, EventError, Failed, from_json

from .messages import JobEvent

KILL_GRACE = 5.0  # seconds a terminated child gets before it is killed
TAIL_LINES = 5  # lines of output kept for the failure message
STDERR_TAIL = 4096  # bytes of stderr read back when the child exited
CLI_ERROR = "neuron-explorer: error: "  # how the command line prefixes a UserError on stderr
TERMINAL = (Done, Failed, Cancelled)


class JobState(str, enum.Enum):  # not enum.StrEnum: the package supports Python 3.10
    """Where a job (a patch run, the build, the lab's worker or one of its requests) stands; equal to its value, so
    run records and tests may compare with the plain word."""

    QUEUED = "queued"  # made, not started
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # shown as its word, as StrEnum would
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def ended_by(cls, event: Event) -> JobState:
        """The state a terminal event leaves a job in."""
        return {Done: cls.DONE, Failed: cls.FAILED, Cancelled: cls.CANCELLED}[type(event)]


class JobProcess:
    """One child command: `start` it (on any thread), `follow` it (blocking, in a thread worker), `cancel` it.

    `post` receives every `JobEvent` (an app's or a screen's `post_message`, which is thread-safe)."""

    def __init__(
        self,
        argv: Sequence[str],
        post: Callable[[JobEvent], object],
        *,
        what: str = "the job",
        serves_requests: bool = False,
    ) -> None:
        self.argv, self.post, self.what, self.serves_requests = list(argv), post, what, serves_requests
        self.popen: subprocess.Popen | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)  # the last lines that were not events
        self._said: Event | None = None  # the child's own terminal event, held until it exits
        self._cancelled = False
        self._ended = False
        self._lock = threading.Lock()

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> bool:
        """Launch the child (a worker's stdin open for `send`); False, and a final `Failed`, when it cannot be
        launched."""
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE if self.serves_requests else subprocess.DEVNULL,
                stderr=self._stderr,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as error:
            self._stderr.close()
            self._end(Failed(f"could not start {self.what}: {error}"))
            return False
        return True

    def follow(self) -> None:
        """Blocking: post each event line of the child's stdout, then, once it exited, its terminal event."""
        if self.popen is None:
            return
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = from_json(line)
            except EventError:
                if line.strip():
                    self.tail.append(line.strip().split("\r")[-1])  # a redrawn bar: its latest state
                continue
            if isinstance(event, TERMINAL) and not self.serves_requests:
                self._said = self._said or event  # the rest after it is still read, and dropped
            elif self._said is None:
                self.post(JobEvent(self, event))
        code = self.popen.wait()
        with self._lock:
            cancelled = self._cancelled
        self._end(self._said or (Cancelled() if cancelled else self._exit_failure(code)))

    def send(self, line: str) -> None:
        """One line to the child's stdin; a child that is gone is left to `follow`, which reports its exit."""
        if self.popen is None or self.popen.stdin is None:
            return
        try:
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def cancel(self) -> bool:
        """Terminate the child (its final event will be `Cancelled`, unless it had said its own); True when it was
        running."""
        with self._lock:
            if self._ended or not self.running:
                return False
            self._cancelled = True
        self._signal(signal.SIGTERM)
        timer = threading.Timer(KILL_GRACE, self._signal, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()
        return True

    def stop(self, grace: float) -> None:
        """Blocking: close the child's stdin (a worker's cue to leave), give it `grace` seconds, then cancel it and
        wait until it is gone (no zombie)."""
        with self._lock:
            self._cancelled = True
        if self.popen is None:
            return
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
            self.popen.wait(grace)
        except (OSError, subprocess.TimeoutExpired):
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait()

    def _signal(self, number: int) -> None:
        """Signal the child's process group (its own children too); nothing when it is gone."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, number)
        except ProcessLookupError:
            pass

    def _exit_failure(self, code: int) -> Failed:
        """Why a child that said no terminal event ended: the last line it wrote (stderr's first), and its code."""
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(self._stderr.tell() - STDERR_TAIL, 0))
        self.tail.extend(line.strip() for line in self._stderr.read().splitlines() if line.strip())
        last = self.tail[-1].removeprefix(CLI_ERROR) if self.tail else ""
        if code == 0:
            return Failed(f"{self.what} exited without saying it finished" + (f": {last}" if last else ""))
        return Failed(last or f"{self.what} exited with code {code}")

    def _end(self, event: Event) -> None:
        """Post the one terminal event."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if self.popen is not None:
            self._stderr.close()
        self.post(JobEvent(self, event, final=True))
