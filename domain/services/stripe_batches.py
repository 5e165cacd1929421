"""Stored Stripe events applied together: in a drained batch, the paid session events of pending checkouts are
credited with a statement per step for the whole batch (the checkouts locked, the credits posted, their grants
opened, the checkouts completed), and those of checkouts credited already are answered at once. Every other event
goes one by one (domain.services.stripe_checkout).

Accounts and checkouts are locked without waiting, in id order: an event whose account or checkout another
transaction holds (another worker's batch, a task applying its own event) is passed over, so two batches never
wait on each other.
"""
from dataclasses import dataclass, field

from domain.errors import InvalidEvent
from domain.grants import PAID
from domain.ids import looks_like
from domain.models import Checkout
from domain.money import CURRENCY
from domain.names import CheckoutStatus, EntryKind, GrantSource
from domain.providers.stripe_gateway import (SESSION_EVENTS, Event, Session, check_object, session_checkout_id,
                                             session_from_event)
from domain.services import grants
from domain.store import batch, checkouts, ledger
from domain.store.uow import Connection

CREDITING = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


def credit_key(checkout_id: str) -> str:
    """The ledger key of a checkout's credit: once per checkout, and its refunds draw from its grant first."""
    return f"stripe_checkout:{checkout_id}"


def pays(checkout: Checkout, session: Session) -> bool:
    """What Stripe reports paid is what the checkout asked for."""
    return session.amount_total == checkout.amount_cents and (session.currency or CURRENCY) == CURRENCY


@dataclass
class Together:
    outcomes: dict[str, str] = field(default_factory=dict)  # event id -> outcome: applied in this transaction
    busy: list[str] = field(default_factory=list)  # events whose account or checkout another transaction holds
    completed: list[Checkout] = field(default_factory=list)  # checkouts credited in this transaction


def apply_together(conn: Connection, rows: list) -> Together:
    """Lock what the claimed events' checkouts need, without waiting, and apply those that can go together."""
    together = Together()
    checkout_of = {row["id"]: checkout_id for row in rows if (checkout_id := _checkout_id(row))}
    account_of = checkouts.accounts_of(conn, sorted(set(checkout_of.values())))
    locked_accounts = batch.lock_free_accounts(conn, list(set(account_of.values())))
    together.busy = [event_id for event_id, checkout_id in checkout_of.items()
                     if checkout_id in account_of and account_of[checkout_id] not in locked_accounts]
    sessions = {row["id"]: session for row in rows if row["id"] not in together.busy
                and checkout_of.get(row["id"]) in account_of and (session := _paid_session(row))}
    locked = checkouts.lock_free(conn, sorted({session.checkout_id for session in sessions.values()}))
    together.busy += [event_id for event_id, session in sessions.items() if session.checkout_id not in locked]
    to_credit: dict[str, tuple[Checkout, Session, str]] = {}  # checkout id -> (checkout, session, event id)
    for event_id, session in sessions.items():
        checkout = locked.get(session.checkout_id)
        if checkout is None or checkout.provider != "stripe":
            continue
        if checkout.status == CheckoutStatus.COMPLETED or checkout.id in to_credit:
            together.outcomes[event_id] = "already_credited"
        elif checkout.status == CheckoutStatus.PENDING and pays(checkout, session):
            to_credit[checkout.id] = (checkout, session, event_id)
    posted = ledger.post_many(conn, [ledger.NewEntry(
        checkout.billing_account_id, checkout.amount_cents, credit_key(checkout.id), workspace_id=checkout.workspace_id,
        description="Stripe top-up", reference=session.id) for checkout, session, _ in to_credit.values()],
        kind=EntryKind.STRIPE_TOPUP)
    credited = {checkout_id: value for checkout_id, value in to_credit.items() if credit_key(checkout_id) in posted}
    grants.open_grants(conn, [(posted[credit_key(checkout_id)], PAID[GrantSource.STRIPE]) for checkout_id in credited])
    together.completed = checkouts.complete_many(conn, {
        checkout.id: (session.id, checkout.details | {"paymentIntent": session.payment_intent})
        for checkout, session, _ in credited.values()})
    together.outcomes |= {event_id: "credited" for _, _, event_id in credited.values()}
    return together


def _checkout_id(row) -> str | None:
    obj = row["payload"].get("object") if row["type"] in SESSION_EVENTS else None
    checkout_id = session_checkout_id(obj) if isinstance(obj, dict) else None
    return checkout_id if checkout_id and looks_like("chk", checkout_id) else None


def _paid_session(row) -> Session | None:
    """The session of an event that credits its checkout when paid, if it is well-formed and paid."""
    if row["type"] not in CREDITING:
        return None
    event = Event(id=row["id"], type=row["type"], object=row["payload"]["object"])
    try:
        check_object(event.type, event.object)
    except InvalidEvent:
        return None  # one by one: recorded as malformed
    session = session_from_event(event)
    return session if session.payment_status == "paid" else None
