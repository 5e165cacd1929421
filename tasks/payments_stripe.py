"""The payments queue: Stripe events and reconciliation."""
from datetime import timedelta

from domain.names import Task
from tasks import RETRY
from worker.celery_app import app
from worker.container import services
from worker.settings import load


@app.task(name=Task.APPLY_STRIPE_EVENT, **RETRY)
def apply_stripe_event(event_id: str) -> str | None:
    """Apply one stored Stripe event; a redelivery finds it processed and does nothing."""
    return services().stripe.apply_event(event_id)


@app.task(name=Task.RECONCILE_STRIPE, **RETRY)
def reconcile_stripe() -> int:
    """Ask Stripe about checkouts still pending, so that a lost webhook still credits."""
    return services().stripe.reconcile(after=timedelta(seconds=load().stripe_reconcile_after_seconds))
