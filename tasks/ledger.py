"""The ledger queue: apply queued money movements."""
import logging

import celery
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from domain.names import Task
from domain.services.operations import stop_cause
from tasks import OPERATION_RETRY, RETRY
from worker import tracing as traces
from worker.celery_app import app
from worker.container import services, wake_up_started

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


@signals.task_prerun.connect
def _join_the_accepting_trace(task=None, kwargs=None, **_) -> None:
    """A message without trace context (sent by an untraced process: `billing relay`, `billing credit`) starts
    its operation's task in the trace of the request that accepted it, kept on the operation's row. Connected
    at import, this runs before the Celery instrumentation's receiver (connected in worker_process_init)."""
    operation_id = (kwargs or {}).get("operation_id")
    if not operation_id or not traces.on() or getattr(task.request, "traceparent", None):
        return
    try:
        with traces.unrecorded():
            task.request.traceparent = services().operations.trace_parent_of(operation_id)
    except Exception as exc:  # tracing never stops a task; the task meets the same database on its own
        log.warning("operation %s: no trace context from its row (%s)", operation_id, type(exc).__name__)


@app.task(name=Task.APPLY_OPERATION, base=OperationTask, **OPERATION_RETRY)
def apply_operation(operation_id: str) -> None:
    """Apply one queued operation (and, a credit or capture, every one queued). Safe to run twice: the ledger key
    is the operation id."""
    wake_up_started(Task.APPLY_OPERATION)
    services().operations.apply(operation_id)


@app.task(name=Task.EXPIRE_GRANTS, **RETRY)
def expire_grants() -> int:
    """Expire what is left of every grant past its expiresAt. Safe to run twice: the expiry's ledger key is the
    grant's, and the grant is closed in the same transaction."""
    return services().grants.expire_due()


@app.task(name=Task.EXPIRE_HOLDS, **RETRY)
def expire_holds() -> int:
    """Release every active hold past its expiresAt. Safe to run twice: a hold stops reserving once."""
    return services().holds.expire_due()
