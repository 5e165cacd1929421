"""Auto top-up: when a debit leaves a workspace's default account below the workspace's threshold and a card is
saved for the account, charge the card off session once and credit the account when Stripe reports it paid.

Each step is recorded in PostgreSQL before the next one is asked for, so nothing accepted is lost:
1. the debit's own transaction records a pending top-up (at most one in flight per account, maxPerDay a UTC day)
   and, once it commits, queues payments.charge_auto_top_up;
2. that task asks Stripe for a confirmed off-session PaymentIntent under an idempotency key made from the account
   and the entry that crossed (a retry gets the same PaymentIntent): made, the top-up is processing; declined
   (card_declined, authentication_required, ...), it failed;
3. payment_intent.succeeded, stored once per event id by the Stripe webhook and applied by a task, credits
   stripe_topup once (ledger key auto_top_up:<id>) as a paid grant; payment_intent.payment_failed fails it;
4. the relay (beat) sends pending top-ups again whose message was lost, and asks Stripe about processing ones
   whose event never came.
A failure emits auto_top_up.failed; three in a row turn the workspace's auto top-up off. A success emits
auto_top_up.succeeded and starts the count afresh.

Saving the card: a Stripe checkout created with savePaymentMethod gets the account's Customer (ensure_customer)
and, once credited, queues payments.save_card, which reads the card of its payment from Stripe.
"""
import logging
from datetime import timedelta

from domain.errors import DomainError, ProviderError
from domain.grants import PAID
from domain.ids import looks_like, new_id
from domain.models import AutoTopUp
from domain.money import CURRENCY
from domain.names import AutoTopUpStatus, CheckoutStatus, EntryKind, GrantSource, IN_FLIGHT, Task, WebhookEventType
from domain.providers.stripe_gateway import Intent, StripeGateway, configured
from domain.services import grants
from domain.services.context import Context
from domain.store import auto_top_ups as store, checkouts, webhook_events
from domain.store.uow import UnitOfWork

log = logging.getLogger(__name__)

FAILURES_TO_DISABLE = 3
RESEND_AFTER = timedelta(seconds=30)  # a pending top-up untouched this long lost its message: sent again
# Stripe keeps an idempotency key for 24 hours: a top-up that could not be asked of Stripe by then is given up,
# never asked again under a key Stripe no longer knows (which could charge twice).
ABANDON_AFTER = timedelta(hours=23)
CARD_SAVE_AFTER = timedelta(minutes=1)  # a card not saved a minute after its checkout changed: asked again
DECLINED = ("requires_payment_method", "requires_action", "canceled")  # what a failed off-session payment reads


def charge_key(top_up: AutoTopUp) -> str:
    """Stripe's idempotency key for the top-up's PaymentIntent: the account and the entry that crossed."""
    return f"auto-top-up-{top_up.billing_account_id}-{top_up.trigger_entry_id}"


def credit_key(top_up_id: str) -> str:
    """The ledger key of a top-up's credit: once per top-up, however many events and runs report it."""
    return f"auto_top_up:{top_up_id}"


def after_debit(uow: UnitOfWork, ctx: Context, account_id: str, workspace_id: str) -> None:
    """In the transaction of a debit of the workspace that holds the account's row: record a top-up when one is
    due, and queue its charge once that transaction commits."""
    after_debits(uow, ctx, {(account_id, workspace_id)})


def after_debits(uow: UnitOfWork, ctx: Context, debited: set[tuple[str, str]]) -> None:
    """after_debit() for the (account id, workspace id) of many debits in this transaction, in one statement."""
    if not debited:
        return
    recorded = store.record_if_due(uow.conn, [(account, workspace, new_id("atu")) for account, workspace in debited])
    for top_up in recorded:
        uow.after_commit(lambda t=top_up: ctx.enqueue(Task.CHARGE_AUTO_TOP_UP, account_id=t.billing_account_id,
                                                      top_up_id=t.id))


def ensure_customer(ctx: Context, stripe: StripeGateway, account_id: str) -> str:
    """The account's Stripe Customer, made once (Stripe's idempotency key is the account's id, and the first one
    recorded wins)."""
    with ctx.uow() as uow:
        saved = store.saved_card(uow.conn, account_id)
    if saved is not None:
        return saved.customer_id
    customer_id = stripe.create_customer(account_id)
    with ctx.uow() as uow:
        customer_id = store.insert_customer(uow.conn, account_id, customer_id)
        uow.commit()
    return customer_id


def apply_intent_event(uow: UnitOfWork, ctx: Context, intent: Intent) -> str:
    """A payment_intent.* event: the top-up its metadata names is credited or failed; another PaymentIntent (a
    checkout's) is not ours to act on here."""
    top_up_id, account_id = intent.metadata.get("auto_top_up_id"), intent.metadata.get("billing_account_id")
    if not (isinstance(top_up_id, str) and looks_like("atu", top_up_id)
            and isinstance(account_id, str) and looks_like("ba", account_id)):
        return "ignored"
    top_up = store.get(uow.conn, account_id, top_up_id, for_update=True)
    if top_up is None:
        return "unknown_auto_top_up"
    return settle(uow, ctx, top_up, intent)


def settle(uow: UnitOfWork, ctx: Context, top_up: AutoTopUp, intent: Intent) -> str:
    """What Stripe reports of the top-up's PaymentIntent (an event, or the reconcile asking): paid credits it,
    declined fails it, anything else waits."""
    if intent.status == "succeeded":
        return _credit(uow, ctx, top_up, intent)
    if intent.failure_code or intent.status in DECLINED:
        return _fail(uow, top_up, intent.id, intent.failure_code or intent.status,
                     intent.failure_message or f"the payment is {intent.status}")
    if top_up.status == AutoTopUpStatus.PENDING:
        store.mark_processing(uow.conn, top_up, intent.id)
    return "processing"


def _credit(uow: UnitOfWork, ctx: Context, top_up: AutoTopUp, intent: Intent) -> str:
    """Credit what was charged once (also a top-up recorded failed: Stripe took the money after all)."""
    if intent.amount != top_up.amount_cents or (intent.currency or CURRENCY) != CURRENCY:
        log.error("auto top-up %s: Stripe reports %s %s paid, expected %d usd; not credited", top_up.id,
                  intent.amount, intent.currency, top_up.amount_cents)
        return "amount_mismatch"
    if top_up.status == AutoTopUpStatus.SUCCEEDED:
        return "already_credited"
    conn = uow.conn
    posting = grants.credit(conn, top_up.billing_account_id, top_up.amount_cents, PAID[GrantSource.STRIPE],
                            kind=EntryKind.STRIPE_TOPUP, key=credit_key(top_up.id), workspace_id=top_up.workspace_id,
                            description="Auto top-up", reference=intent.id)
    store.mark_succeeded(conn, top_up, intent.id)
    store.reset_failures(conn, top_up.workspace_id)
    _emit(conn, top_up, WebhookEventType.AUTO_TOP_UP_SUCCEEDED, status=AutoTopUpStatus.SUCCEEDED,
          paymentIntentId=intent.id, transactionId=ctx.ids.transaction(posting.entry.id))
    uow.after_commit(lambda: ctx.enqueue(Task.RECOMPUTE_TIER, account_id=top_up.billing_account_id))
    return "auto_top_up_credited"


def _fail(uow: UnitOfWork, top_up: AutoTopUp, intent_id: str | None, code: str, message: str) -> str:
    """Record a failed top-up once, count it, and turn the workspace's auto top-up off at the third in a row."""
    if top_up.status not in IN_FLIGHT:
        return f"already_{top_up.status}"
    store.mark_failed(uow.conn, top_up, intent_id, code, message)
    failures, enabled = store.count_failure(uow.conn, top_up.workspace_id, FAILURES_TO_DISABLE)
    _emit(uow.conn, top_up, WebhookEventType.AUTO_TOP_UP_FAILED, status=AutoTopUpStatus.FAILED,
          paymentIntentId=intent_id or top_up.payment_intent_id, failureCode=code, failureMessage=message,
          failuresInARow=failures, autoTopUpEnabled=enabled)
    if not enabled and failures >= FAILURES_TO_DISABLE:
        log.warning("auto top-up of workspace %s turned off after %d failures in a row", top_up.workspace_id, failures)
    return "auto_top_up_failed"


def _emit(conn, top_up: AutoTopUp, event_type: str, **fields) -> None:
    webhook_events.emit(conn, workspace_id=top_up.workspace_id, type=event_type, data={
        "id": top_up.id, "billingAccountId": top_up.billing_account_id, "workspaceId": top_up.workspace_id,
        "amountCents": top_up.amount_cents, "currency": CURRENCY, "createdAt": top_up.created_at, **fields})


class AutoTopUpService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def _stripe(self) -> StripeGateway:
        return configured(self._ctx.stripe)

    def charge(self, account_id: str, top_up_id: str) -> str:
        """Ask Stripe for the pending top-up's PaymentIntent and record its answer. Safe to run twice: the same
        idempotency key gets the same PaymentIntent, and only a pending top-up is charged or recorded."""
        stripe = self._stripe
        with self._ctx.uow() as uow:
            top_up = store.get(uow.conn, account_id, top_up_id, for_update=True)
            if top_up is None or top_up.status != AutoTopUpStatus.PENDING:
                return f"already_{top_up.status}" if top_up else "unknown_auto_top_up"
            card = store.saved_card(uow.conn, account_id)
            if card is None or card.payment_method_id is None:
                outcome = _fail(uow, top_up, None, "no_saved_card", "no card is saved for the billing account")
                uow.commit()
                return outcome
            store.attempted(uow.conn, top_up)
            uow.commit()
        try:
            intent = stripe.charge_off_session(
                customer_id=card.customer_id, payment_method_id=card.payment_method_id,
                amount_cents=top_up.amount_cents, idempotency_key=charge_key(top_up),
                metadata={"auto_top_up_id": top_up.id, "billing_account_id": account_id,
                          "workspace_id": top_up.workspace_id})
        except ProviderError as exc:
            # Stripe answered with an error that is not a decline (4xx, or a 5xx, which Stripe keeps as the answer to
            # this idempotency key: asking again would get it again). Unreachable, or 429, is Unavailable: retried.
            intent = Intent(id=None, status="error", amount=top_up.amount_cents, currency=CURRENCY, metadata={},
                            failure_code="stripe_error", failure_message=exc.detail)
        with self._ctx.uow() as uow:
            top_up = store.get(uow.conn, account_id, top_up_id, for_update=True)
            outcome = self._answered(uow, top_up, intent)
            uow.commit()
        return outcome

    @staticmethod
    def _answered(uow: UnitOfWork, top_up: AutoTopUp, intent: Intent) -> str:
        """Stripe's answer to the charge: declined fails the top-up; a PaymentIntent made (paid or still
        processing) waits for payment_intent.succeeded, which credits it."""
        if intent.failure_code or intent.status in DECLINED:
            return _fail(uow, top_up, intent.id, intent.failure_code or intent.status,
                         intent.failure_message or f"the payment is {intent.status}")
        if top_up.status != AutoTopUpStatus.PENDING:
            return f"already_{top_up.status}"  # its event was applied first
        store.mark_processing(uow.conn, top_up, intent.id)
        return "auto_top_up_charged"

    def relay(self, *, reconcile_after: timedelta) -> dict[str, int]:
        """What a lost message or event left behind (beat): pending top-ups sent again (or given up after
        ABANDON_AFTER), card saves asked again, and Stripe asked about top-ups processing for `reconcile_after`."""
        return {"sent": self._send_pending(), "cards": self._send_card_saves(),
                "reconciled": self._reconcile_processing(reconcile_after)}

    def _send_pending(self) -> int:
        sent: list[tuple[str, str]] = []
        with self._ctx.uow() as uow:
            for top_up in store.unfinished(uow.conn, AutoTopUpStatus.PENDING, older_than=RESEND_AFTER):
                if store.age(uow.conn, top_up) > ABANDON_AFTER:
                    _fail(uow, top_up, None, "not_sent", "Stripe could not be asked within 23 hours")
                    continue
                if not self._ctx.enqueue(Task.CHARGE_AUTO_TOP_UP, account_id=top_up.billing_account_id,
                                         top_up_id=top_up.id):
                    break  # the broker is down: the next run tries again
                sent.append((top_up.billing_account_id, top_up.id))
            store.touch(uow.conn, sent)
            uow.commit()
        return len(sent)

    def _send_card_saves(self) -> int:
        sent: list[str] = []
        with self._ctx.uow() as uow:
            for checkout_id in checkouts.cards_to_save(uow.conn, older_than=CARD_SAVE_AFTER):
                if not self._ctx.enqueue(Task.SAVE_CARD, checkout_id=checkout_id):
                    break  # the broker is down: the next run tries again
                sent.append(checkout_id)
            checkouts.touch(uow.conn, sent)
            uow.commit()
        return len(sent)

    def _reconcile_processing(self, after: timedelta) -> int:
        if self._ctx.stripe is None:
            return 0
        with self._ctx.uow() as uow:
            processing = store.unfinished(uow.conn, AutoTopUpStatus.PROCESSING, older_than=after)
        settled = 0
        for top_up in processing:
            if top_up.payment_intent_id is None:
                continue
            try:
                settled += self._reconcile_one(top_up) != "processing"
            except DomainError as exc:
                log.warning("reconciling auto top-up %s failed: %s", top_up.id, exc.detail)
        return settled

    def _reconcile_one(self, top_up: AutoTopUp) -> str:
        intent = self._stripe.retrieve_intent(top_up.payment_intent_id)
        with self._ctx.uow() as uow:
            top_up = store.get(uow.conn, top_up.billing_account_id, top_up.id, for_update=True)
            outcome = settle(uow, self._ctx, top_up, intent) if top_up.status in IN_FLIGHT else "settled_meanwhile"
            store.touch(uow.conn, [(top_up.billing_account_id, top_up.id)])
            uow.commit()
        return outcome

    def save_card(self, checkout_id: str) -> str:
        """Keep the card a completed checkout that asked to save it was paid with, as its account's card for auto
        top-ups (the checkout completed last wins). Safe to run twice: the checkout records that it was done."""
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id)
        if (checkout is None or checkout.status != CheckoutStatus.COMPLETED
                or not checkout.details.get("savePaymentMethod") or "card" in checkout.details):
            return "nothing_to_save"
        intent_id = checkout.details.get("paymentIntent")
        try:
            card = self._stripe.card_of_payment(intent_id) if intent_id else None
        except ProviderError as exc:  # Stripe refuses to say (the payment is gone): no card, asked no more
            log.warning("checkout %s: the card of its payment could not be read: %s", checkout_id, exc.detail)
            card = None
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id, for_update=True)
            if "card" in checkout.details:
                return "already_saved"
            customer = store.saved_card(uow.conn, checkout.billing_account_id)
            saved = card is not None and customer is not None and card.customer_id == customer.customer_id
            if saved:
                store.save_card(uow.conn, checkout.billing_account_id, customer_id=customer.customer_id,
                                payment_method_id=card.payment_method_id, brand=card.brand, last4=card.last4,
                                checkout_id=checkout.id, completed_at=checkout.completed_at)
            checkouts.change(uow.conn, checkout.id, details=checkout.details | {
                "card": {"brand": card.brand, "last4": card.last4} if saved else None})
            uow.commit()
        return "card_saved" if saved else "no_card"
