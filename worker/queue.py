"""Sending tasks by name, best effort: a send the broker refused is the outbox relay's job."""
import logging

from domain import tracing
from worker.celery_app import app
from worker.routing import queue_of

log = logging.getLogger(__name__)

# Queues this process has declared: Celery would declare (bind a copy of) the queue on every send; once
# is enough, and a message to the default exchange is routed by queue name without it.
_declared: set[str] = set()


def enqueue(task_name: str, **kwargs: object) -> bool:
    """One attempt, bounded by the broker's socket timeout: a request never waits on a dead broker."""
    queue = queue_of(task_name)
    try:
        app.send_task(task_name, kwargs=kwargs, queue=queue, retry=False,
                      headers={"request_id": tracing.request_id.get()},
                      **({"declare": []} if queue in _declared else {}))
        _declared.add(queue)
        return True
    except Exception as exc:  # any broker failure: the intent is already in Postgres
        log.warning("enqueue of %s failed (%s: %s); the relay will send it", task_name,
                    type(exc).__name__, exc)
        return False
