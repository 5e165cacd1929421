"""Wake-up messages, merged: many accepted credits, one message.

A queued credit needs no message of its own: the task a message starts applies every queued credit
(domain.services.operations). So the API sends a credit's message from a thread of its own, at most once
per `interval` per process, and always after the call that asked for it: every credit committed before a
call is seen by the worker that takes the message sent after it. A send the broker refuses leaves the
credit queued in PostgreSQL for the outbox relay, as any failed enqueue does.

Nor is a message needed while another one waits in the queue, not yet started: the task it starts claims what
was committed before it started. So, with a WaitingFlag (a Redis key), a send first raises the flag and is
skipped when it was up already, and the task lowers it as it starts, before it claims anything. A flag whose
message was lost (or a worker that died holding it) falls after WAITING_TTL_MS: wake-ups go out again.
"""
import atexit
import logging
import os
import threading
import time
from collections.abc import Sequence

import redis

from domain import tracing
from domain.services.context import Enqueue
from worker import tracing as traces

log = logging.getLogger(__name__)

WAITING_TTL_MS = 5000


class WaitingFlag:
    """Whether a wake-up message of a task waits in the queue, not yet started: a Redis key per task name."""

    def __init__(self, client: redis.Redis, ttl_ms: int = WAITING_TTL_MS) -> None:
        self._redis, self._ttl_ms = client, ttl_ms

    @staticmethod
    def key(task_name: str) -> str:
        return f"billing:wake-up-waiting:{task_name}"

    def raise_(self, task_name: str) -> bool:
        """Raise the flag; False when it was up already (no message needed). Redis failing: True (send anyway)."""
        try:
            return bool(self._redis.set(self.key(task_name), 1, nx=True, px=self._ttl_ms))
        except redis.RedisError as exc:
            log.warning("wake-up flag of %s not raised (%s); sending anyway", task_name, exc)
            return True

    def lower(self, task_name: str) -> None:
        """The task started (or its message was not sent): the next wake-up is sent."""
        try:
            self._redis.delete(self.key(task_name))
        except redis.RedisError as exc:  # the flag falls on its own after its TTL
            log.warning("wake-up flag of %s not lowered (%s)", task_name, exc)


class MergedSends:
    """An Enqueue that merges calls per task: each send carries the newest call's arguments."""

    def __init__(self, send: Enqueue, interval: float, waiting: WaitingFlag | None = None,
                 flagged: frozenset[str] = frozenset()) -> None:
        self._send = send
        self._interval = interval
        self._waiting, self._flagged = waiting, flagged  # tasks whose message is skipped while one waits
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
                    self._send_unless_waiting(task_name, kwargs)
            finally:
                tracing.request_id.reset(token)

    def _send_unless_waiting(self, task_name: str, kwargs: dict) -> None:
        flag = self._waiting if task_name in self._flagged else None
        if flag is not None and not flag.raise_(task_name):
            return  # a message waits in the queue: its task will claim what was committed before this call
        if not self._send(task_name, **kwargs) and flag is not None:
            flag.lower(task_name)

    def _run(self) -> None:
        while True:
            with self._wanted:
                while not self._pending:
                    self._wanted.wait()
            self.flush()
            time.sleep(self._interval)
