"""The lab's model worker: a long-lived process that loads the pair once, then answers requests read from stdin.

A reader thread takes the request lines as they come, so that a cancel reaches the request being computed: it sets
an event that the session's hook checks at every forward call. Requests are answered one at a time, in order; a
request cancelled before its turn is answered `cancelled` without running. Each outcome is one job event on stdout
(`protocol` describes the exchange).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

from neuron_explorer.engine.lab.protocol import (
    BadRequest,
    CancelRequest,
    ExamplesRequest,
    QuitRequest,
    RunRequest,
    Work,
    parse_request,
)
from neuron_explorer.engine.lab.session import ExamplesResult, LabResult, LabSession, RequestCancelled, TokensResult
from neuron_explorer.errors import UserError
from neuron_explorer.events import Answer, Cancelled, Event, Failed, Ready

_END = object()


class _Inbox:
    """Requests in arrival order, filled by a thread that reads the input; cancels act at once."""

    def __init__(self, lines: Iterable[str]):
        self.queue: queue.Queue = queue.Queue()
        self.cancelled: set[int] = set()
        self.current: int | None = None
        self.stop_current = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, args=(lines,), daemon=True, name="lab-requests").start()

    def _read(self, lines: Iterable[str]) -> None:
        for line in lines:
            if not line.strip():
                continue
            try:
                request = parse_request(line)
            except UserError as error:
                self.queue.put(error)
                continue
            if isinstance(request, QuitRequest):
                break
            if isinstance(request, CancelRequest):
                with self.lock:
                    self.cancelled.add(request.id)
                    if self.current == request.id:
                        self.stop_current.set()
                continue
            self.queue.put(request)
        self.queue.put(_END)

    def next(self):
        item = self.queue.get()
        if isinstance(item, Work):
            with self.lock:
                self.current = item.id
                self.stop_current.clear()
                if item.id in self.cancelled:
                    self.stop_current.set()
        return item


def serve(session: LabSession, lines: Iterable[str], emit: Callable[[Event], None]) -> None:
    """Answer the requests in `lines` until quit or the end of input."""
    emit(Ready(f"{session.base_spec} and {session.tuned_spec} loaded", round(session.load_seconds, 2)))
    inbox = _Inbox(lines)
    while True:
        item = inbox.next()
        if item is _END:
            return
        if isinstance(item, UserError):
            emit(Failed(str(item), request=item.request if isinstance(item, BadRequest) else None))
            continue
        if inbox.stop_current.is_set():
            emit(Cancelled())
            continue
        result: LabResult | TokensResult | ExamplesResult
        try:
            if isinstance(item, RunRequest):
                result = session.answer(item, report=emit, cancelled=inbox.stop_current)
            elif isinstance(item, ExamplesRequest):
                result = session.neuron_examples(item, cancelled=inbox.stop_current)
            else:
                result = session.value_tokens(item)
        except RequestCancelled:
            emit(Cancelled())
        except UserError as error:
            emit(Failed(str(error), request=item.id))
        except Exception as error:  # the worker stays up for the next prompt; the app shows the error
            emit(Failed(f"{type(error).__name__}: {error}", request=item.id))
        else:
            emit(Answer(item.id, result.to_dict()))
