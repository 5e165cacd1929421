"""Auto top-up SQL: each workspace's settings, each account's Stripe Customer and saved card, and the top-ups.

A top-up is recorded by the transaction of the debit that left the balance below the threshold (record_if_due), so
the need is never lost and never invented by a debit that rolled back; the partial unique index on in-flight
top-ups keeps one per account at a time.
"""
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from domain.models import AutoTopUp, AutoTopUpSettings, SavedCard
from domain.names import AutoTopUpStatus, IN_FLIGHT

# The workspace's auto top-up lives in its billing_settings row (auto_top_up_* columns; enabled NULL: not set up).
_SETTINGS = text("""
SELECT auto_top_up_enabled AS enabled, auto_top_up_threshold_cents AS threshold_cents,
       auto_top_up_amount_cents AS amount_cents, auto_top_up_max_per_day AS max_per_day,
       auto_top_up_failures_in_a_row AS failures_in_a_row
FROM billing_settings WHERE workspace_id = :workspace_id AND auto_top_up_enabled IS NOT NULL
""")


def settings(conn: Connection, workspace_id: str) -> AutoTopUpSettings | None:
    row = conn.execute(_SETTINGS, {"workspace_id": workspace_id}).mappings().first()
    return AutoTopUpSettings(**row) if row else None


# Turning it on (again, or changing it while on) starts the count of failures in a row afresh.
_PUT = text("""
INSERT INTO billing_settings AS s (workspace_id, auto_top_up_enabled, auto_top_up_threshold_cents,
                                   auto_top_up_amount_cents, auto_top_up_max_per_day)
VALUES (:workspace_id, :enabled, :threshold_cents, :amount_cents, :max_per_day)
ON CONFLICT (workspace_id) DO UPDATE SET auto_top_up_enabled = EXCLUDED.auto_top_up_enabled,
    auto_top_up_threshold_cents = EXCLUDED.auto_top_up_threshold_cents,
    auto_top_up_amount_cents = EXCLUDED.auto_top_up_amount_cents,
    auto_top_up_max_per_day = EXCLUDED.auto_top_up_max_per_day,
    auto_top_up_failures_in_a_row = CASE WHEN EXCLUDED.auto_top_up_enabled IS TRUE THEN 0
                                         ELSE s.auto_top_up_failures_in_a_row END,
    updated_at = now()
""")


def put_settings(conn: Connection, workspace_id: str, settings: AutoTopUpSettings | None) -> None:
    """Set the workspace's auto top-up (None: not set up)."""
    conn.execute(_PUT, {"workspace_id": workspace_id, "enabled": settings and settings.enabled,
                        "threshold_cents": settings and settings.threshold_cents,
                        "amount_cents": settings and settings.amount_cents,
                        "max_per_day": settings and settings.max_per_day})


_FAILURE = text("""
UPDATE billing_settings SET auto_top_up_failures_in_a_row = auto_top_up_failures_in_a_row + 1,
    auto_top_up_enabled = auto_top_up_enabled AND auto_top_up_failures_in_a_row + 1 < :limit, updated_at = now()
WHERE workspace_id = :workspace_id AND auto_top_up_enabled IS NOT NULL
RETURNING auto_top_up_failures_in_a_row AS failures, auto_top_up_enabled AS enabled
""")


def count_failure(conn: Connection, workspace_id: str, limit: int) -> tuple[int, bool]:
    """One more failure in a row; at `limit` the workspace's auto top-up is off. (failures in a row, still on)."""
    row = conn.execute(_FAILURE, {"workspace_id": workspace_id, "limit": limit}).first()
    return (row.failures, row.enabled) if row else (0, False)


def reset_failures(conn: Connection, workspace_id: str) -> None:
    conn.execute(text("UPDATE billing_settings SET auto_top_up_failures_in_a_row = 0 "
                      "WHERE workspace_id = :workspace_id AND auto_top_up_failures_in_a_row > 0"),
                 {"workspace_id": workspace_id})


_CARD = text("""
SELECT billing_account_id, customer_id, payment_method_id, card_brand AS brand, card_last4 AS last4
FROM stripe_customers WHERE billing_account_id = :account_id
""")


def saved_card(conn: Connection, account_id: str) -> SavedCard | None:
    """The account's Stripe Customer and saved card (payment_method_id None: no card saved yet); None: no customer."""
    row = conn.execute(_CARD, {"account_id": account_id}).mappings().first()
    return SavedCard(**row) if row else None


def insert_customer(conn: Connection, account_id: str, customer_id: str) -> str:
    """Record the account's Stripe Customer; the one recorded first wins (Stripe made one for both: same key)."""
    conn.execute(text("INSERT INTO stripe_customers (billing_account_id, customer_id) VALUES (:a, :c) "
                      "ON CONFLICT (billing_account_id) DO NOTHING"), {"a": account_id, "c": customer_id})
    return conn.execute(text("SELECT customer_id FROM stripe_customers WHERE billing_account_id = :a"),
                        {"a": account_id}).scalar_one()


# The card of the checkout completed last is the one kept, whatever order the saves run in.
_SAVE_CARD = text("""
UPDATE stripe_customers SET payment_method_id = :payment_method_id, card_brand = :brand, card_last4 = :last4,
    saved_by_checkout_id = :checkout_id, saved_at = :completed_at
WHERE billing_account_id = :account_id AND customer_id = :customer_id
  AND (saved_at IS NULL OR saved_at <= :completed_at)
""")


def save_card(conn: Connection, account_id: str, *, customer_id: str, payment_method_id: str, brand: str | None,
              last4: str | None, checkout_id: str, completed_at: datetime) -> None:
    conn.execute(_SAVE_CARD, {"account_id": account_id, "customer_id": customer_id,
                              "payment_method_id": payment_method_id, "brand": brand, "last4": last4,
                              "checkout_id": checkout_id, "completed_at": completed_at})


# Called in the transaction of a debit that holds the account's row: the account's balance now, and its newest
# entry (the debit's own). A top-up is recorded when the workspace's auto top-up is on, the account is still its
# default, the balance is below the threshold, a card is saved, fewer than max_per_day top-ups of the account
# started this UTC day, and none is in flight (the partial unique index; ON CONFLICT covers it).
_RECORD = text("""
INSERT INTO auto_top_ups (billing_account_id, id, workspace_id, trigger_entry_id, amount_cents)
SELECT a.id, v.top_up_id, s.workspace_id,
       (SELECT max(e.id) FROM ledger_entries e WHERE e.billing_account_id = a.id), s.auto_top_up_amount_cents
FROM unnest(CAST(:accounts AS text[]), CAST(:workspaces AS text[]), CAST(:top_up_ids AS text[]))
     AS v(account_id, workspace_id, top_up_id)
JOIN billing_settings s ON s.workspace_id = v.workspace_id
JOIN workspaces w ON w.id = s.workspace_id
JOIN billing_accounts a ON a.id = w.default_billing_account_id
JOIN stripe_customers c ON c.billing_account_id = a.id AND c.payment_method_id IS NOT NULL
WHERE a.id = v.account_id AND s.auto_top_up_enabled
  AND a.balance_cents < s.auto_top_up_threshold_cents
  AND (SELECT count(*) FROM auto_top_ups t WHERE t.billing_account_id = a.id
       AND t.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') < s.auto_top_up_max_per_day
ON CONFLICT DO NOTHING
RETURNING *
""")


def record_if_due(conn: Connection, debited: list[tuple[str, str, str]]) -> list[AutoTopUp]:
    """The top-ups recorded for debits (account id, workspace id, a new top-up id) that were due one."""
    rows = conn.execute(_RECORD, {"accounts": [d[0] for d in debited], "workspaces": [d[1] for d in debited],
                                  "top_up_ids": [d[2] for d in debited]}).mappings()
    return [_top_up(row) for row in rows]


def _top_up(row) -> AutoTopUp:
    return AutoTopUp(**{name: row[name] for name in AutoTopUp.__dataclass_fields__})


def get(conn: Connection, account_id: str, top_up_id: str, *, for_update: bool = False) -> AutoTopUp | None:
    lock = " FOR UPDATE" if for_update else ""
    row = conn.execute(text(f"SELECT * FROM auto_top_ups WHERE billing_account_id = :a AND id = :id{lock}"),
                       {"a": account_id, "id": top_up_id}).mappings().first()
    return _top_up(row) if row else None


def _change(conn: Connection, top_up: AutoTopUp, assignments: str, **params) -> None:
    conn.execute(text(f"UPDATE auto_top_ups SET {assignments}, updated_at = clock_timestamp() "
                      "WHERE billing_account_id = :a AND id = :id"), {"a": top_up.billing_account_id,
                                                                      "id": top_up.id, **params})


def attempted(conn: Connection, top_up: AutoTopUp) -> None:
    """A charge is about to be asked of Stripe: counted, and left alone by the relay for a while."""
    _change(conn, top_up, "attempts = attempts + 1")


def mark_processing(conn: Connection, top_up: AutoTopUp, payment_intent_id: str | None) -> None:
    _change(conn, top_up, "status = :s, payment_intent_id = COALESCE(:pi, payment_intent_id)",
            s=AutoTopUpStatus.PROCESSING, pi=payment_intent_id)


def mark_succeeded(conn: Connection, top_up: AutoTopUp, payment_intent_id: str) -> None:
    _change(conn, top_up, "status = :s, payment_intent_id = :pi, failure_code = NULL, failure_message = NULL, "
                          "finished_at = clock_timestamp()", s=AutoTopUpStatus.SUCCEEDED, pi=payment_intent_id)


def mark_failed(conn: Connection, top_up: AutoTopUp, payment_intent_id: str | None, code: str, message: str) -> None:
    _change(conn, top_up, "status = :s, payment_intent_id = COALESCE(:pi, payment_intent_id), failure_code = :code, "
                          "failure_message = :message, finished_at = clock_timestamp()",
            s=AutoTopUpStatus.FAILED, pi=payment_intent_id, code=code, message=message)


def touch(conn: Connection, keys: list[tuple[str, str]]) -> None:
    """The relay sent these (account, id) again: left alone for a while."""
    if keys:
        conn.execute(text("UPDATE auto_top_ups SET updated_at = clock_timestamp() FROM unnest(CAST(:a AS text[]), "
                          "CAST(:i AS text[])) AS k(a, i) WHERE billing_account_id = k.a AND id = k.i"),
                     {"a": [a for a, _ in keys], "i": [i for _, i in keys]})


_UNFINISHED = text("""
SELECT * FROM auto_top_ups WHERE status = :status AND updated_at < clock_timestamp() - :older_than
ORDER BY updated_at LIMIT :limit FOR UPDATE SKIP LOCKED
""")


def unfinished(conn: Connection, status: str, *, older_than: timedelta, limit: int = 500) -> list[AutoTopUp]:
    """Top-ups in `status` untouched for `older_than`, oldest first, locked (others running are skipped)."""
    rows = conn.execute(_UNFINISHED, {"status": status, "older_than": older_than, "limit": limit}).mappings()
    return [_top_up(row) for row in rows]


def age(conn: Connection, top_up: AutoTopUp) -> timedelta:
    return conn.execute(text("SELECT clock_timestamp() - CAST(:t AS timestamptz)"),
                        {"t": top_up.created_at}).scalar_one()


def counts(conn: Connection) -> dict[str, int]:
    """Auto top-ups by status, every status named (metrics)."""
    found = dict(conn.execute(text("SELECT status, count(*) FROM auto_top_ups GROUP BY status")).all())
    return {status.value: found.get(status.value, 0) for status in AutoTopUpStatus}


def oldest_in_flight_seconds(conn: Connection) -> float:
    """Seconds since the oldest top-up still in flight was recorded (the auto_top_ups_unfinished index); 0: none."""
    in_flight = ", ".join(f"'{status.value}'" for status in IN_FLIGHT)
    return float(conn.execute(text(f"SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM auto_top_ups "
                                   f"WHERE status IN ({in_flight})")).scalar() or 0)
