"""Stripe Checkout top-ups: create sessions, take webhooks, credit each paid checkout exactly once."""
import logging
import time
from datetime import UTC, datetime, timedelta

from domain.errors import DomainError, InvalidEvent, Unavailable
from domain.grants import PAID
from domain.ids import looks_like, new_id
from domain.models import Caller, Checkout
from domain.names import CheckoutStatus, EntryKind, GrantSource, Task
from domain.providers.stripe_gateway import (INTENT_EVENTS, SESSION_EVENTS, Event, Session, StripeGateway,
                                             check_object, configured, intent_from_event, session_from_event)
from domain.services import access, auto_top_ups, credit_batches, grants, stripe_batches
from domain.services.stripe_batches import credit_key, pays
from domain.services.context import Context
from domain.store import checkouts, ledger, stripe_events
from domain.store.uow import Connection, StoreError

log = logging.getLogger(__name__)



EVENT_BATCH = 200  # stored events applied by one transaction at most
DRAIN_SECONDS = 2.0  # how long one task goes on applying batches of stored events

# An event naming a checkout id that is still not there after this long names none of ours: it is closed
# as unknown_session rather than retried by every reconcile run for ever.
GHOST_AFTER = timedelta(minutes=10)


class CheckoutNotVisibleYet(Unavailable):
    """An event names a checkout of ours that this transaction cannot see yet; retry shortly."""


class StripeCheckoutService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def _stripe(self) -> StripeGateway:
        return configured(self._ctx.stripe)

    def create(self, caller: Caller, workspace_id: str, amount_cents: int, success_url: str, cancel_url: str,
               idempotency_scope: str | None, *, save_payment_method: bool = False) -> Checkout:
        """Record a pending checkout, then create its session (Stripe's idempotency key is the checkout id).
        Saving the payment method, the session gets the account's Stripe Customer and saves the card on it.

        A Stripe failure closes the checkout as failed, except under an Idempotency-Key: the retry finds
        the same checkout by its scope and asks Stripe again under the same key, so a session Stripe made
        before the failure is the one it gets, never a second (the reconcile job closes it if no retry
        comes)."""
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True).workspace
            stripe = self._stripe  # after the access check (404 either way), before a checkout is recorded
            checkout, created = checkouts.insert_checkout(
                uow.conn, checkout_id=new_id("chk"), provider="stripe", workspace_id=workspace.id,
                billing_account_id=workspace.default_billing_account_id, amount_cents=amount_cents,
                created_by=caller.name, idempotency_scope=idempotency_scope,
                details={"successUrl": success_url, "cancelUrl": cancel_url,
                         **({"savePaymentMethod": True} if save_payment_method else {})})
            uow.commit()
        if not created and (checkout.provider_ref or checkout.status != CheckoutStatus.PENDING):
            return checkout
        try:
            customer_id = auto_top_ups.ensure_customer(self._ctx, stripe, checkout.billing_account_id) \
                if checkout.details.get("savePaymentMethod") else None
            session = stripe.create_session(checkout_id=checkout.id, workspace_id=checkout.workspace_id,
                                            billing_account_id=checkout.billing_account_id,
                                            amount_cents=amount_cents, success_url=success_url,
                                            cancel_url=cancel_url, customer_id=customer_id)
        except DomainError as exc:
            if idempotency_scope is None:
                self._close(checkout.id, CheckoutStatus.FAILED, f"creating the Stripe session failed: {exc.detail}")
            raise
        with self._ctx.uow() as uow:
            checkout = checkouts.change(uow.conn, checkout.id, provider_ref=session.id, url=session.url)
            uow.commit()
        return checkout

    def receive(self, payload: bytes, signature: str | None) -> bool:
        """Verify and store a webhook event (one statement), then wake the worker; False for a repeat delivery.
        The wake-ups of many events may be merged: the task of one applies every stored event (apply_event)."""
        event = self._stripe.parse_event(payload, signature)
        with self._ctx.single() as driver:
            stored = stripe_events.store(driver, event.id, event.type, {"object": event.object})
        if stored:
            (self._ctx.wake or self._ctx.enqueue)(Task.APPLY_STRIPE_EVENT, event_id=event.id)
        return stored

    def apply_event(self, event_id: str) -> str | None:
        """Apply one stored event once (the credit's key is our checkout id, so two events for one payment
        credit once), then the other events stored and not applied yet, in batches (drain)."""
        try:
            return self._apply_alone(event_id)
        finally:
            self._drain()

    def _apply_alone(self, event_id: str) -> str | None:
        """One event in a transaction of its own; an event whose checkout is not visible yet raises (a retry)."""
        with self._ctx.uow() as uow:
            row = stripe_events.get_for_update(uow.conn, event_id)
            if row is None or row["processed_at"] is not None:
                return None
            outcome = self._apply_stored(uow, row, patient=True)
            stripe_events.mark_processed(uow.conn, {event_id: outcome})
            uow.commit()
        log.info("stripe event %s (%s): %s", event_id, row["type"], outcome)
        return outcome

    def _apply_stored(self, uow, row, *, patient: bool) -> str:
        event = Event(id=row["id"], type=row["type"], object=row["payload"]["object"])
        try:
            return self._apply(uow, event)
        except CheckoutNotVisibleYet:
            if patient and datetime.now(UTC) - row["received_at"] < GHOST_AFTER:
                raise
            return "unknown_session"  # a checkout id of ours that never existed (another deployment's)

    def _drain(self) -> None:
        """Apply the stored events nobody holds, EVENT_BATCH per transaction, for up to DRAIN_SECONDS: those that can
        go together first (stripe_batches: an event whose account or checkout another transaction holds is passed
        over, and one message comes back for those at the end), then the others one by one. An event whose
        checkout is not visible yet is passed over too (its own message's retries, or the reconcile job, come back
        to it); a batch that fails otherwise rolls back whole, and each of its events gets a message of its own,
        retried with backoff as one event's is."""
        deadline, passed_over, busy = time.monotonic() + DRAIN_SECONDS, [], []
        while time.monotonic() < deadline:
            rows = []
            try:
                with self._ctx.uow() as uow:
                    rows = stripe_events.claim_unprocessed(uow.conn, limit=EVENT_BATCH, but=passed_over)
                    together = stripe_batches.apply_together(uow.conn, rows)
                    busy += together.busy
                    passed_over += together.busy
                    outcomes = dict(together.outcomes)
                    for row in rows:
                        if row["id"] in outcomes or row["id"] in together.busy:
                            continue
                        try:
                            outcomes[row["id"]] = self._apply_stored(uow, row, patient=True)
                        except CheckoutNotVisibleYet:  # raised before the event wrote anything
                            passed_over.append(row["id"])
                    self._all_credited(uow, together.completed)
                    stripe_events.mark_processed(uow.conn, outcomes)
                    uow.commit()
            except (Unavailable, StoreError) as exc:
                if not rows:
                    raise  # nothing claimed: the database itself, which the task's retry comes back to
                log.warning("a batch of %d stripe events failed (%s); each goes alone", len(rows), exc)
                for row in rows:
                    self._ctx.enqueue(Task.APPLY_STRIPE_EVENT, event_id=row["id"])
                return
            if outcomes:
                log.info("stripe events applied in a batch: %s", outcomes)
            if len(rows) < EVENT_BATCH:
                break
        else:  # out of time, more stored: a drain
            self._ctx.enqueue(Task.APPLY_STRIPE_EVENT, event_id=rows[-1]["id"])
        if busy:  # their accounts or checkouts were held by another transaction, done since maybe: one more drain
            self._ctx.enqueue(Task.APPLY_STRIPE_EVENT, event_id=busy[0])

    def _all_credited(self, uow, completed: list[Checkout]) -> None:
        """_credited() for checkouts credited together: their accounts' tiers in one statement each."""
        credit_batches.store_tiers(uow.conn, self._ctx.config.tiers, {c.billing_account_id for c in completed})
        for checkout in completed:
            if checkout.details.get("savePaymentMethod"):
                uow.after_commit(lambda c=checkout: self._ctx.enqueue(Task.SAVE_CARD, checkout_id=c.id))

    def _apply(self, uow, event: Event) -> str:
        try:
            check_object(event.type, event.object)
        except InvalidEvent as exc:  # stored before webhooks were checked: recorded, not retried for ever
            log.warning("stripe event %s is malformed: %s", event.id, exc.detail)
            return "malformed"
        if event.type == "charge.refunded":
            return self._refund(uow, event.object)
        if event.type in INTENT_EVENTS:
            return auto_top_ups.apply_intent_event(uow, self._ctx, intent_from_event(event))
        if event.type not in SESSION_EVENTS:
            return "ignored"
        session = session_from_event(event)
        checkout = self._checkout_of(uow.conn, session)
        if checkout is None:
            return "unknown_session"
        if event.type == "checkout.session.expired":
            return self._set_closed(uow.conn, checkout, CheckoutStatus.EXPIRED, "the Stripe session expired")
        if event.type == "checkout.session.async_payment_failed":
            return self._set_closed(uow.conn, checkout, CheckoutStatus.FAILED, "the payment failed")
        if event.type == "checkout.session.completed" and session.payment_status != "paid":
            checkouts.change(uow.conn, checkout.id, details=checkout.details | {"paymentIntent": session.payment_intent})
            return "awaiting_payment"
        outcome = self._credit(uow.conn, checkout, session)
        if outcome == "credited":
            self._credited(uow, checkout)
        return outcome

    def _tier_changes(self, uow, account_id: str) -> None:
        """Money moved: the account's rate-limit tier, from this transaction's snapshot."""
        credit_batches.store_tiers(uow.conn, self._ctx.config.tiers, {account_id})

    def _credited(self, uow, checkout: Checkout) -> None:
        """A checkout was credited: its account's tier changes, and the card it asked to save is read from Stripe
        (the relay asks again if this message is lost)."""
        self._tier_changes(uow, checkout.billing_account_id)
        if checkout.details.get("savePaymentMethod"):
            uow.after_commit(lambda: self._ctx.enqueue(Task.SAVE_CARD, checkout_id=checkout.id))

    @staticmethod
    def _checkout_of(conn: Connection, session: Session) -> Checkout | None:
        checkout = None
        if session.checkout_id and looks_like("chk", session.checkout_id):
            checkout = checkouts.get(conn, session.checkout_id, for_update=True)
            if checkout is None:
                raise CheckoutNotVisibleYet(f"checkout {session.checkout_id} is not visible yet")
        return checkout or checkouts.by_provider_ref(conn, "stripe", session.id, for_update=True)

    @staticmethod
    def _credit(conn: Connection, checkout: Checkout, session: Session) -> str:
        """Credit what Stripe reports as paid, once per checkout; a mismatch is recorded, not credited."""
        if checkout.status == CheckoutStatus.COMPLETED:
            return "already_credited"
        details = checkout.details | {"paymentIntent": session.payment_intent}
        if not pays(checkout, session):
            checkouts.change(conn, checkout.id, status=CheckoutStatus.FAILED, details=details,
                             failure_reason=f"amount_mismatch: Stripe reports {session.amount_total} "
                                            f"{session.currency}, expected {checkout.amount_cents} usd")
            return "amount_mismatch"
        grants.credit(conn, checkout.billing_account_id, checkout.amount_cents, PAID[GrantSource.STRIPE],
                      kind=EntryKind.STRIPE_TOPUP, key=credit_key(checkout.id), workspace_id=checkout.workspace_id,
                      description="Stripe top-up", reference=session.id)
        checkouts.change(conn, checkout.id, status=CheckoutStatus.COMPLETED, provider_ref=session.id, details=details,
                         failure_reason=None)
        return "credited"

    def _refund(self, uow, charge: dict) -> str:
        """Debit what Stripe refunded of a charge beyond what was debited for it already, but never more, over
        all the checkout's charges, than the checkout credited (nothing if it never completed): the excess is
        kept in its details for `billing audit`, not debited. A repeated event changes nothing, and the locked
        checkout row orders concurrent ones. A refund may take the balance below zero."""
        conn, intent = uow.conn, charge["payment_intent"]
        checkout = checkouts.by_payment_intent(conn, intent, for_update=True) if intent else None
        if checkout is None:
            return "unknown_charge"
        charge_id, account = charge["id"], checkout.billing_account_id
        reported = checkout.details.get("refundCharges", {})  # charge id -> the largest amount_refunded seen
        reported = reported | {charge_id: max(reported.get(charge_id, 0), charge["amount_refunded"])}
        of_charge = ledger.refunded_cents(conn, account, [charge_id])
        of_checkout = ledger.refunded_cents(conn, account, list(reported))
        credited = checkout.amount_cents if checkout.status == CheckoutStatus.COMPLETED else 0
        due = max(0, min(reported[charge_id] - of_charge, credited - of_checkout))
        excess = sum(reported.values()) - of_checkout - due
        capped = excess > checkout.details.get("refundExcessCents", 0)
        details = checkout.details | {"refundCharges": reported, "refundExcessCents": excess}
        if details != checkout.details:
            checkouts.change(conn, checkout.id, details=details)
        if capped:
            log.warning("checkout %s: Stripe refunded %d cents more than it credited; not debited", checkout.id,
                        excess)
        if due == 0:
            return "refund_capped" if capped else "already_refunded"
        self._tier_changes(uow, account)
        posting = grants.debit(conn, account, -due, kind=EntryKind.REFUND, allow_negative=True,
                               key=f"stripe_refund:{charge_id}:{of_charge + due}", reference=charge_id,
                               workspace_id=checkout.workspace_id, description="Stripe refund",
                               first_key=credit_key(checkout.id))
        if capped:
            return "refund_capped"
        return "refunded" if posting.entry.balance_after_cents >= 0 else "refunded_below_zero"

    @staticmethod
    def _set_closed(conn: Connection, checkout: Checkout, status: str, reason: str) -> str:
        if checkout.status != CheckoutStatus.PENDING:
            return f"already_{checkout.status}"
        checkouts.change(conn, checkout.id, status=status, failure_reason=reason)
        return status

    def _close(self, checkout_id: str, status: str, reason: str) -> None:
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id, for_update=True)
            self._set_closed(uow.conn, checkout, status, reason)
            uow.commit()

    def reconcile(self, *, after: timedelta, abandon_after: timedelta = timedelta(hours=24)) -> int:
        """Ask Stripe about checkouts pending longer than `after` (a lost webhook still credits) and
        re-queue events never applied."""
        with self._ctx.uow() as uow:
            pending = checkouts.pending(uow.conn, "stripe", older_than=after)
            stuck_events = stripe_events.unprocessed(uow.conn, older_than=timedelta(minutes=1))
        for event_id in stuck_events:
            self._ctx.enqueue(Task.APPLY_STRIPE_EVENT, event_id=event_id)
        for checkout_id in pending:
            try:
                self._reconcile_one(checkout_id, abandon_after)
            except DomainError as exc:
                log.warning("reconciling checkout %s failed: %s", checkout_id, exc.detail)
        return len(pending)

    def _reconcile_one(self, checkout_id: str, abandon_after: timedelta) -> None:
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id)
            age = checkouts.age(uow.conn, checkout)
        if checkout.provider_ref is None:  # never reached Stripe, or crashed before we saved the session
            if checkout.idempotency_scope is None or age.total_seconds() > self._ctx.config.idempotency_ttl_seconds:
                self._close(checkout_id, CheckoutStatus.FAILED, "the Stripe session was never created")
            return  # a retry under its Idempotency-Key may still resume it
        session = self._stripe.retrieve_session(checkout.provider_ref)
        if session.status == "open" and age > abandon_after:
            session = self._stripe.expire_session(checkout.provider_ref)
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id, for_update=True)
            if session.status == "complete" and session.payment_status == "paid":
                if self._credit(uow.conn, checkout, session) == "credited":
                    self._credited(uow, checkout)
            elif session.status == "expired":
                self._set_closed(uow.conn, checkout, CheckoutStatus.EXPIRED, "the Stripe session expired")
            uow.commit()
