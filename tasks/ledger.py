"""The ledger queue: apply queued money movements."""
from celery import Task

from tasks import RETRY
from worker.celery_app import app
from worker.container import services


class OperationTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Retries exhausted or an unexpected error: the operation is dead-lettered as failed."""
        services().operations.fail(kwargs["operation_id"], f"{type(exc).__name__}: {exc}")


@app.task(name="ledger.apply_operation", base=OperationTask, **RETRY)
def apply_operation(operation_id: str) -> None:
    """Apply one queued operation. Safe to run twice: the ledger key is the operation id."""
    services().operations.apply(operation_id)
