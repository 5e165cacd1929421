"""Sending tasks by name, best effort: a send the broker refused is the outbox relay's job."""
import logging

from worker.celery_app import app, queue_of

log = logging.getLogger(__name__)

_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def enqueue(task_name: str, **kwargs: object) -> bool:
    try:
        app.send_task(task_name, kwargs=kwargs, queue=queue_of(task_name), retry=True,
                      retry_policy=_RETRY_POLICY)
        return True
    except Exception as exc:  # any broker failure: the intent is already in Postgres
        log.warning("enqueue of %s failed (%s: %s); the relay will send it", task_name,
                    type(exc).__name__, exc)
        return False
