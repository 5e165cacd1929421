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

from domain import tracing
from domain.services.context import Enqueue


class MergedSends:
    """An Enqueue that merges calls per task: each send carries the newest call's arguments."""

    def __init__(self, send: Enqueue, interval: float) -> None:
        self._send = send
        self._interval = interval
        self._pending: dict[str, tuple[dict, str | None]] = {}  # task -> (kwargs, request id), newest
        self._wanted = threading.Condition()
        self._thread_pid: int | None = None
        atexit.register(self.flush)

    def __call__(self, task_name: str, **kwargs: object) -> bool:
        with self._wanted:
            self._pending[task_name] = (kwargs, tracing.request_id.get())
            if self._thread_pid != os.getpid():  # started lazily, so a forked child runs its own
                self._thread_pid = os.getpid()
                threading.Thread(target=self._run, name="wakeups", daemon=True).start()
            self._wanted.notify()
        return True  # sent later; a failure there is the relay's, as for any enqueue

    def flush(self) -> None:
        """Send what is pending now (at exit: nothing asked for is left unsent)."""
        with self._wanted:
            pending, self._pending = self._pending, {}
        for task_name, (kwargs, request_id) in pending.items():
            token = tracing.request_id.set(request_id)
            try:
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
