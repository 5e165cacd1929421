"""Housekeeping: the outbox relay and expired idempotency keys."""
from tasks import RETRY
from worker.celery_app import app
from worker.container import services


@app.task(name="maintenance.relay_outbox", **RETRY)
def relay_outbox() -> int:
    """Send again every operation whose message was never sent or was lost."""
    return services().operations.relay()


@app.task(name="maintenance.purge_idempotency_keys", **RETRY)
def purge_idempotency_keys() -> int:
    return services().idempotency.purge()
