"""Sending tasks by name, best effort: a send the broker refused is the outbox relay's job."""
import logging

from domain import tracing
from worker.celery_app import app, queue_of

log = logging.getLogger(__name__)


def enqueue(task_name: str, **kwargs: object) -> bool:
    """One attempt, bounded by the broker's socket timeout: a request never waits on a dead broker."""
    try:
        app.send_task(task_name, kwargs=kwargs, queue=queue_of(task_name), retry=False,
                      headers={"request_id": tracing.request_id.get()})
        return True
    except Exception as exc:  # any broker failure: the intent is already in Postgres
        log.warning("enqueue of %s failed (%s: %s); the relay will send it", task_name,
                    type(exc).__name__, exc)
        return False
