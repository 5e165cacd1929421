"""Tier SQL: the inputs of the tier rule in one snapshot, and the stored tier of each account."""
from datetime import timedelta

from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.models import AccountTier
from domain.store.tables import account_tiers, billing_accounts

_t = account_tiers.c

# Balance, paid total and newest entry id read by one statement, so they are one consistent snapshot.
_INPUTS = text("""
SELECT a.balance_cents,
       COALESCE((SELECT SUM(e.amount_cents) FROM ledger_entries e WHERE e.billing_account_id = a.id
                 AND e.kind IN ('stripe_topup', 'x402_topup', 'refund')), 0) AS paid_cents,
       COALESCE((SELECT MAX(e.id) FROM ledger_entries e WHERE e.billing_account_id = a.id), 0) AS last_entry_id
FROM billing_accounts a WHERE a.id = :account_id
""")

# Accounts whose tier is old, or older than their newest entry (a recompute message was lost).
_STALE = text("""
SELECT t.billing_account_id FROM account_tiers t
WHERE t.computed_at < now() - make_interval(secs => :age)
   OR t.as_of_entry_id < COALESCE((SELECT MAX(e.id) FROM ledger_entries e
                                   WHERE e.billing_account_id = t.billing_account_id), 0)
ORDER BY t.computed_at LIMIT :limit
""")


def inputs(conn: Connection, account_id: str) -> tuple[int, int, int] | None:
    """(balance, paid, newest entry id) of the account, or None when it does not exist."""
    row = conn.execute(_INPUTS, {"account_id": account_id}).first()
    return (int(row.balance_cents), int(row.paid_cents), int(row.last_entry_id)) if row else None


def _tier(row) -> AccountTier:
    return AccountTier(billing_account_id=row["billing_account_id"], tier=row["tier"], reason=row["reason"],
                       paid_cents=row["paid_cents"], balance_cents=row["balance_cents"],
                       computed_at=row["computed_at"])


def get(conn: Connection, account_id: str) -> AccountTier | None:
    row = conn.execute(select(account_tiers).where(_t.billing_account_id == account_id)).mappings().first()
    return _tier(row) if row else None


def save(conn: Connection, account_id: str, *, tier: str, reason: str, paid_cents: int, balance_cents: int,
         as_of_entry_id: int) -> AccountTier:
    """Store a computation unless one from a newer ledger state is stored already; the stored one."""
    values = {"tier": tier, "reason": reason, "paid_cents": paid_cents, "balance_cents": balance_cents,
              "as_of_entry_id": as_of_entry_id, "computed_at": func.now()}
    stmt = pg_insert(account_tiers).values(billing_account_id=account_id, **values)
    stmt = stmt.on_conflict_do_update(index_elements=["billing_account_id"], set_=values,
                                      where=_t.as_of_entry_id <= stmt.excluded.as_of_entry_id)
    row = conn.execute(stmt.returning(account_tiers)).mappings().first()
    return _tier(row) if row else get(conn, account_id)


def stale(conn: Connection, *, older_than: timedelta, limit: int) -> list[str]:
    rows = conn.execute(_STALE, {"age": older_than.total_seconds(), "limit": limit})
    return [row.billing_account_id for row in rows]


def account_ids(conn: Connection, *, after: str, limit: int) -> list[str]:
    """Billing account ids in id order, from just after `after`."""
    query = select(billing_accounts.c.id).where(billing_accounts.c.id > after).order_by(billing_accounts.c.id)
    return list(conn.execute(query.limit(limit)).scalars())
