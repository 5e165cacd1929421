"""Wake-up messages, merged: many accepted credits, one message.

A queued credit needs no message of its own: the task a message starts applies every queued credit
(domain.services.operations). So the API sends a credit's message from a thread of its own, at most once
per `interval` per process, and always after the call that asked for it: every credit committed before a
call is seen by the worker that takes the message sent after it. A send the broker refuses leaves the
credit queued in PostgreSQL for the outbox relay, as any failed enqueue does.
"""
import atexit
import os
import threading
import time
from collections.abc import Sequence

from domain import tracing
from domain.services.context import Enqueue
from worker import tracing as traces


class MergedSends:
    """An Enqueue that merges calls per task: each send carries the newest call's arguments."""

    def __init__(self, send: Enqueue, interval: float) -> None:
        self._send = send
        self._interval = interval
        # task -> (kwargs, request id) of the newest call, and the traceparents of the calls merged, oldest first
        self._pending: dict[str, tuple[dict, str | None, Sequence[str]]] = {}
        self._wanted = threading.Condition()
        self._thread_pid: int | None = None
        atexit.register(self.flush)

    def __call__(self, task_name: str, **kwargs: object) -> bool:
        parent = traces.trace_parent()  # None unless tracing is on
        with self._wanted:
            parents = self._merged(task_name, parent) if parent else ()
            self._pending[task_name] = (kwargs, tracing.request_id.get(), parents)
            if self._thread_pid != os.getpid():  # started lazily, so a forked child runs its own
                self._thread_pid = os.getpid()
                threading.Thread(target=self._run, name="wakeups", daemon=True).start()
            self._wanted.notify()
        return True  # sent later; a failure there is the relay's, as for any enqueue

    def _merged(self, task_name: str, parent: str) -> list[str]:
        """The traceparents of the calls merged so far, this one last; the oldest beyond those linked are dropped."""
        earlier = self._pending[task_name][2] if task_name in self._pending else ()
        return [*earlier[-traces.MAX_LINKS:], parent]

    def flush(self) -> None:
        """Send what is pending now (at exit: nothing asked for is left unsent)."""
        with self._wanted:
            pending, self._pending = self._pending, {}
        for task_name, (kwargs, request_id, parents) in pending.items():
            token = tracing.request_id.set(request_id)
            try:  # in the trace of the call whose arguments are sent, as its request id is; linked to the others
                with traces.resume(f"wake-up {task_name}", parents[-1] if parents else None, parents[:-1]):
                    self._send(task_name, **kwargs)
            finally:
                tracing.request_id.reset(token)

    def _run(self) -> None:
        while True:
            with self._wanted:
                while not self._pending:
                    self._wanted.wait()
            self.flush()
            time.sleep(self._interval)
