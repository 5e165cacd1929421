"""The ledger queue: apply queued money movements."""
import logging

import celery
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from domain.names import Task
from domain.services.operations import stop_cause
from tasks import OPERATION_RETRY
from worker.celery_app import app
from worker.container import services

log = logging.getLogger(__name__)


def cause(exc: BaseException) -> str:
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return "the attempt ran past its time limit"
    return stop_cause(exc)


class OperationTask(celery.Task):
    """Runs an operation; an attempt stopped by anything but a business refusal (which the service records
    as failed) goes back to the queue with backoff, for as long as it takes: money accepted is never
    dropped for a transient cause."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            operation_id = kwargs["operation_id"]
            log.warning("operation %s: attempt stopped (%s): %r", operation_id, cause(exc), exc)
            delay = services().operations.retry_later(operation_id, cause(exc),
                                                      fallback_attempt=self.request.retries)
            raise self.retry(exc=exc, countdown=delay, max_retries=None) from None

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """The retry itself could not be sent (the broker is down): the operation stays queued with its
        cause recorded, and the relay sends it again."""
        services().operations.retry_later(kwargs["operation_id"], cause(exc))


@app.task(name=Task.APPLY_OPERATION, base=OperationTask, **OPERATION_RETRY)
def apply_operation(operation_id: str) -> None:
    """Apply one queued operation. Safe to run twice: the ledger key is the operation id."""
    services().operations.apply(operation_id)
