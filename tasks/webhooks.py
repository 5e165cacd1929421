"""The webhooks queue: one task per delivery attempt, the dispatcher, and grant.expiring. Its own queue and
workers: a slow or dead receiver holds up webhooks only, never the ledger."""
from domain.names import Task
from tasks import RETRY
from worker import metrics
from worker.celery_app import app
from worker.container import services

# An attempt waits at most BILLING_WEBHOOK_TIMEOUT_SECONDS (10 s) on the receiver; these bound the rest.
ATTEMPT = RETRY | {"soft_time_limit": 45, "time_limit": 60}


@app.task(name=Task.DELIVER_WEBHOOK, bind=True, **ATTEMPT)
def deliver_webhook(self, delivery_id: str) -> None:
    """One attempt of a delivery. Safe to run twice: the attempt is claimed in the database first."""
    delivered = services().webhook_delivery.deliver(delivery_id)
    metrics.observe_webhook_attempt(delivered)
    if delivered is not None and delivered.retry_in is not None:
        raise self.retry(countdown=delivered.retry_in, max_retries=None)


@app.task(name=Task.DISPATCH_WEBHOOKS, **RETRY)
def dispatch_webhooks() -> int:
    """Send a message for each due delivery: new events, retries come due, messages lost."""
    return services().webhook_delivery.dispatch()


@app.task(name=Task.NOTICE_EXPIRING_GRANTS, **RETRY)
def notice_expiring_grants() -> int:
    """grant.expiring for grants expiring within 7 days. Safe to run twice: each grant is marked once."""
    return services().webhook_delivery.notice_expiring_grants()
