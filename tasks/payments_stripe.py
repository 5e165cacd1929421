"""The payments queue: Stripe events, reconciliation, auto top-ups and the cards they charge."""
from datetime import timedelta

from domain.names import Task
from tasks import RETRY
from worker.celery_app import app
from worker.container import services, wake_up_started
from worker.settings import load


@app.task(name=Task.APPLY_STRIPE_EVENT, **RETRY)
def apply_stripe_event(event_id: str) -> str | None:
    """Apply one stored Stripe event, then every one stored (a wake-up); a redelivery finds it processed."""
    wake_up_started(Task.APPLY_STRIPE_EVENT)
    return services().stripe.apply_event(event_id)


@app.task(name=Task.RECONCILE_STRIPE, **RETRY)
def reconcile_stripe() -> int:
    """Ask Stripe about checkouts still pending, so that a lost webhook still credits."""
    return services().stripe.reconcile(after=timedelta(seconds=load().stripe_reconcile_after_seconds))


@app.task(name=Task.CHARGE_AUTO_TOP_UP, **RETRY)
def charge_auto_top_up(account_id: str, top_up_id: str) -> str:
    """Ask Stripe for a pending auto top-up's off-session PaymentIntent; a redelivery finds it charged already,
    and a retry asks under the same Stripe idempotency key."""
    return services().auto_top_ups.charge(account_id, top_up_id)


@app.task(name=Task.SAVE_CARD, **RETRY)
def save_card(checkout_id: str) -> str:
    """Keep the card a checkout that asked to save it was paid with; a redelivery finds it saved."""
    return services().auto_top_ups.save_card(checkout_id)


@app.task(name=Task.RELAY_AUTO_TOP_UPS, **RETRY)
def relay_auto_top_ups() -> dict[str, int]:
    """Send again the auto top-ups and card saves whose message was lost; ask Stripe about top-ups whose
    payment_intent event never came."""
    return services().auto_top_ups.relay(reconcile_after=timedelta(seconds=load().stripe_reconcile_after_seconds))
