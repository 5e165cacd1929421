"""Housekeeping: the outbox relay and expired idempotency keys."""
from domain.names import Task
from tasks import RETRY
from worker.celery_app import app
from worker.container import services


@app.task(name=Task.RELAY_OUTBOX, **RETRY)
def relay_outbox() -> int:
    """Send again every operation whose message was never sent or was lost."""
    return services().relay.send_due()


@app.task(name=Task.PURGE_IDEMPOTENCY_KEYS, **RETRY)
def purge_idempotency_keys() -> int:
    return services().idempotency.purge()
