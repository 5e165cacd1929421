"""Checkout SQL, shared by the Stripe and x402 flows."""
import json
from datetime import timedelta

from sqlalchemy import Connection, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain import views
from domain.models import Checkout
from domain.names import CheckoutStatus, WebhookEventType
from domain.store import webhook_events
from domain.store.tables import checkouts

_c = checkouts.c


def _checkout(row) -> Checkout:
    return Checkout(**{name: row[name] for name in Checkout.__dataclass_fields__})


def insert_checkout(conn: Connection, *, checkout_id: str, provider: str, workspace_id: str,
                    billing_account_id: str, amount_cents: int, created_by: str,
                    idempotency_scope: str | None = None, **fields) -> tuple[Checkout, bool]:
    """Insert a pending checkout; a repeated (created_by, idempotency_scope) or x402 payment
    returns the existing one and False."""
    stmt = (pg_insert(checkouts).values(
        id=checkout_id, provider=provider, workspace_id=workspace_id, billing_account_id=billing_account_id,
        amount_cents=amount_cents, created_by=created_by, idempotency_scope=idempotency_scope, **fields)
        .on_conflict_do_nothing().returning(checkouts))
    row = conn.execute(stmt).mappings().first()
    if row is not None:
        return _checkout(row), True
    if fields.get("nonce") is not None:
        found = by_payment(conn, fields["network"], fields["payer"], fields["nonce"])
    else:
        found = _one(conn, (_c.created_by == created_by) & (_c.idempotency_scope == idempotency_scope))
    return found, False


def _one(conn: Connection, condition, *, for_update: bool = False) -> Checkout | None:
    query = select(checkouts).where(condition)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return _checkout(row) if row else None


def get(conn: Connection, checkout_id: str, *, for_update: bool = False) -> Checkout | None:
    return _one(conn, _c.id == checkout_id, for_update=for_update)


# A batch's checkouts as one array parameter: an IN list of as many parameters is a new statement for each
# length, which SQLAlchemy expands and psycopg parses again every time.
_ACCOUNTS_OF = text("SELECT id, billing_account_id FROM checkouts WHERE id = ANY(CAST(:ids AS text[]))")
_LOCK_FREE = text("SELECT * FROM checkouts WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR UPDATE SKIP LOCKED")


def accounts_of(conn: Connection, checkout_ids: list[str]) -> dict[str, str]:
    """The billing account of each checkout that exists, by checkout id."""
    rows = conn.execute(_ACCOUNTS_OF, {"ids": checkout_ids}) if checkout_ids else []
    return {row.id: row.billing_account_id for row in rows}


def lock_free(conn: Connection, checkout_ids: list[str]) -> dict[str, Checkout]:
    """Row-lock those of the checkouts no other transaction holds, in id order; by id."""
    if not checkout_ids:
        return {}
    return {row["id"]: _checkout(row) for row in conn.execute(_LOCK_FREE, {"ids": checkout_ids}).mappings()}


# The rows come as one JSON document: a text[] of JSON details, each needing quotes, costs psycopg a regex per element.
_COMPLETE = text("""
UPDATE checkouts c SET status = 'completed', completed_at = now(), updated_at = now(), provider_ref = v.ref,
       details = v.details, failure_reason = NULL
FROM json_to_recordset(CAST(:rows AS json)) AS v(id text, ref text, details jsonb)
WHERE c.id = v.id
RETURNING c.*
""")


def complete_many(conn: Connection, completed: dict[str, tuple[str, dict]]) -> list[Checkout]:
    """Complete checkouts this transaction holds locked, each with (provider_ref, details), in one statement; each
    emits checkout.completed, as change() does."""
    if not completed:
        return []
    rows = conn.execute(_COMPLETE, {"rows": json.dumps([{"id": checkout_id, "ref": ref, "details": details}
                                                         for checkout_id, (ref, details) in completed.items()])})
    order = {checkout_id: n for n, checkout_id in enumerate(completed)}
    done = sorted((_checkout(row) for row in rows.mappings()), key=lambda c: order[c.id])
    for checkout in done:
        webhook_events.emit(conn, workspace_id=checkout.workspace_id, type=_EVENTS[CheckoutStatus.COMPLETED],
                            data=views.checkout(checkout))
    return done


def by_provider_ref(conn: Connection, provider: str, ref: str, *, for_update: bool = False) -> Checkout | None:
    return _one(conn, (_c.provider == provider) & (_c.provider_ref == ref), for_update=for_update)


def by_payment(conn: Connection, network: str, payer: str, nonce: str) -> Checkout | None:
    return _one(conn, (_c.network == network) & (_c.payer == payer) & (_c.nonce == nonce))


# The webhook event of a checkout that reaches each status.
_EVENTS = {CheckoutStatus.COMPLETED: WebhookEventType.CHECKOUT_COMPLETED,
           CheckoutStatus.FAILED: WebhookEventType.CHECKOUT_FAILED}


def change(conn: Connection, checkout_id: str, **values) -> Checkout:
    """Set fields (status, provider_ref, url, details, failure_reason, ...); completed_at follows status. A
    checkout reaching completed or failed emits its webhook event in this transaction."""
    event = _EVENTS.get(values.get("status"))
    if event is not None and conn.execute(select(_c.status).where(_c.id == checkout_id)).scalar() == values["status"]:
        event = None  # there already
    if values.get("status") == CheckoutStatus.COMPLETED:
        values["completed_at"] = func.now()
    row = conn.execute(update(checkouts).where(_c.id == checkout_id)
                       .values(updated_at=func.now(), **values).returning(checkouts)).mappings().one()
    checkout = _checkout(row)
    if event is not None:
        webhook_events.emit(conn, workspace_id=checkout.workspace_id, type=event, data=views.checkout(checkout))
    return checkout


def pending(conn: Connection, provider: str, *, older_than: timedelta, limit: int = 500) -> list[str]:
    query = (select(_c.id).where(_c.provider == provider, _c.status == CheckoutStatus.PENDING,
                                 _c.created_at < func.now() - older_than)
             .order_by(_c.created_at).limit(limit))
    return list(conn.execute(query).scalars())


def of_workspace(conn: Connection, workspace_id: str, *, limit: int, before: tuple | None = None) -> list[Checkout]:
    """Newest first; `before` is the (created_at, id) of the last checkout of the previous page."""
    query = select(checkouts).where(_c.workspace_id == workspace_id)
    if before is not None:
        query = query.where(tuple_(_c.created_at, _c.id) < tuple_(*before))
    rows = conn.execute(query.order_by(_c.created_at.desc(), _c.id.desc()).limit(limit)).mappings()
    return [_checkout(row) for row in rows]


def by_payment_intent(conn: Connection, payment_intent: str, *, for_update: bool = False) -> Checkout | None:
    return _one(conn, (_c.provider == "stripe") & (_c.details["paymentIntent"].astext == payment_intent),
                for_update=for_update)


def age(conn: Connection, checkout: Checkout) -> timedelta:
    """How long ago the checkout was created, by the database's clock (which set created_at)."""
    return conn.execute(select(func.now())).scalar_one() - checkout.created_at


def cards_to_save(conn: Connection, *, older_than: timedelta, limit: int = 500) -> list[str]:
    """Completed Stripe checkouts that asked to save their card and whose card is not saved yet, untouched for
    `older_than` (the predicate of the checkouts_card_to_save index); locked, others' skipped."""
    query = text("""
    SELECT id FROM checkouts
    WHERE provider = 'stripe' AND status = 'completed' AND details ? 'savePaymentMethod' AND NOT details ? 'card'
      AND updated_at < now() - :older_than
    ORDER BY completed_at LIMIT :limit FOR UPDATE SKIP LOCKED""")
    return list(conn.execute(query, {"older_than": older_than, "limit": limit}).scalars())


def touch(conn: Connection, checkout_ids: list[str]) -> None:
    """Their messages were sent again: left alone for a while."""
    if checkout_ids:
        conn.execute(update(checkouts).where(_c.id.in_(checkout_ids)).values(updated_at=func.now()))
