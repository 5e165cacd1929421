"""Grant SQL: a grant per credit entry, debits drawn from the grants in the contract's order, expiry, pages.

Every statement here runs on an account whose row this transaction holds locked (a posting took it, or
lock_account did): that lock orders every change to an account's grants, so the grant rows need none.
"""
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, text

from domain.grants import Terms
from domain.ids import new_id
from domain.models import Entry, Grant
from domain.store.tables import grants

_g = grants.c

# A credit's grant holds what the credit left above zero: one that first paid off a negative balance holds
# the rest (and is depleted at once when nothing is left), so the grants always add up to a balance >= 0.
_OPEN = text("""
INSERT INTO grants (billing_account_id, id, entry_id, source, category, priority, expires_at, amount_cents,
                    opened_cents, remaining_cents, status, closed_entry_id, created_at)
SELECT v.account_id, v.id, v.entry_id, v.source, v.category, v.priority, v.expires_at, v.amount, o.cents, o.cents,
       CASE WHEN o.cents > 0 THEN 'active' ELSE 'depleted' END, CASE WHEN o.cents = 0 THEN v.entry_id END,
       v.created_at
FROM json_to_recordset(CAST(:rows AS json)) AS v(account_id text, id text, entry_id bigint, source text,
     category text, priority int, expires_at timestamptz, amount bigint, balance_after bigint, created_at timestamptz)
CROSS JOIN LATERAL (SELECT LEAST(v.amount, GREATEST(v.balance_after, 0)) AS cents) o
""")


def open_for(conn: Connection, credits: list[tuple[Entry, Terms]]) -> None:
    """One grant per new credit entry, in one statement."""
    if not credits:
        return
    rows = [{"account_id": e.billing_account_id, "id": new_id("grt"), "entry_id": e.id, "source": t.source,
             "category": t.category, "priority": t.priority,
             "expires_at": t.expires_at.isoformat() if t.expires_at else None, "amount": e.amount_cents,
             "balance_after": e.balance_after_cents, "created_at": e.created_at.isoformat()}
            for e, t in credits]
    conn.execute(_OPEN, {"rows": json.dumps(rows)})


# Take each debit from the active grants of its account in the contract's order (the grant of the credit keyed
# :first_key, a refunded payment's, first), the debits one after another in entry order: a grant covers the
# range of its account's running total of remaining cents that ends at its own, a debit the range of the
# running total of the account's debits that ends at its own, and a debit draws from each grant what their
# ranges share. Debits beyond every grant (allowed below zero) leave them at zero. Each grant a debit draws keeps
# a draw row with what it has left then, so a balance as of any instant knows its grants.
_DRAW = text("""
WITH debit AS (
    SELECT v.*, SUM(v.cents) OVER (PARTITION BY v.account_id ORDER BY v.entry_id) AS upto
    FROM unnest(CAST(:accounts AS text[]), CAST(:cents AS bigint[]), CAST(:entry_ids AS bigint[]))
         AS v(account_id, cents, entry_id)
), first AS (
    SELECT g.billing_account_id, g.id FROM grants g JOIN ledger_entries e ON e.id = g.entry_id
    WHERE g.billing_account_id = ANY(CAST(:accounts AS text[])) AND e.billing_account_id = g.billing_account_id
      AND e.idempotency_key = CAST(:first_key AS text)
), ordered AS (
    SELECT g.billing_account_id, g.id, g.remaining_cents,
           SUM(g.remaining_cents) OVER (PARTITION BY g.billing_account_id
                                        ORDER BY f.id IS NOT NULL DESC, g.priority, g.expires_at, g.entry_id
                                        ROWS UNBOUNDED PRECEDING) AS upto
    FROM grants g LEFT JOIN first f ON f.billing_account_id = g.billing_account_id AND f.id = g.id
    WHERE g.billing_account_id = ANY(CAST(:accounts AS text[])) AND g.status = 'active'
), taken AS (
    SELECT o.billing_account_id, o.id, d.entry_id,
           LEAST(o.upto, d.upto) - GREATEST(o.upto - o.remaining_cents, d.upto - d.cents) AS cents,
           o.upto - LEAST(o.upto, d.upto) AS remaining_after
    FROM ordered o JOIN debit d ON d.account_id = o.billing_account_id
    WHERE o.upto - o.remaining_cents < d.upto AND d.upto - d.cents < o.upto
), drawn AS (
    UPDATE grants g SET remaining_cents = t.remaining_after,
           status = CASE WHEN t.remaining_after = 0 THEN 'depleted' ELSE 'active' END,
           closed_entry_id = CASE WHEN t.remaining_after = 0 THEN t.entry_id END
    FROM (SELECT DISTINCT ON (billing_account_id, id) billing_account_id, id, entry_id, remaining_after FROM taken
          ORDER BY billing_account_id, id, entry_id DESC) t
    WHERE g.billing_account_id = t.billing_account_id AND g.id = t.id
)
INSERT INTO grant_draws (billing_account_id, grant_id, entry_id, amount_cents, remaining_after_cents)
SELECT billing_account_id, id, entry_id, cents, remaining_after FROM taken
""")


def draw(conn: Connection, account_id: str, cents: int, entry_id: int, *, first_key: str | None = None) -> None:
    """Take `cents` (> 0) from the account's grants for the movement ending with entry `entry_id`."""
    draw_many(conn, [(account_id, cents, entry_id)], first_key=first_key)


def draw_many(conn: Connection, debits: list[tuple[str, int, int]], *, first_key: str | None = None) -> None:
    """Take debits, each (account id, cents > 0, entry id), from their accounts' grants in one statement."""
    if debits:
        conn.execute(_DRAW, {"accounts": [d[0] for d in debits], "cents": [d[1] for d in debits],
                             "entry_ids": [d[2] for d in debits], "first_key": first_key})


_DUE = text("""
SELECT billing_account_id, id FROM grants
WHERE status = 'active' AND expires_at <= now() ORDER BY expires_at LIMIT :limit
""")
_DUE_ONE = text("""
SELECT remaining_cents FROM grants
WHERE billing_account_id = :account_id AND id = :id AND status = 'active' AND expires_at <= now()
""")
_CLOSE_EXPIRED = text("""
WITH closed AS (
    UPDATE grants SET remaining_cents = 0, status = 'expired', closed_entry_id = :entry_id
    WHERE billing_account_id = :account_id AND id = :id AND status = 'active' RETURNING id
)
INSERT INTO grant_draws (billing_account_id, grant_id, entry_id, amount_cents, remaining_after_cents)
SELECT :account_id, id, :entry_id, :cents, 0 FROM closed
""")


def due(conn: Connection, *, limit: int) -> list[tuple[str, str]]:
    """(account id, grant id) of active grants whose expiresAt has come, soonest first."""
    return [(row.billing_account_id, row.id) for row in conn.execute(_DUE, {"limit": limit})]


def remaining_if_due(conn: Connection, account_id: str, grant_id: str) -> int | None:
    """What an active grant past its expiresAt has left; None when it is not (any more)."""
    return conn.execute(_DUE_ONE, {"account_id": account_id, "id": grant_id}).scalar()


def close_expired(conn: Connection, account_id: str, grant_id: str, entry_id: int, cents: int) -> None:
    conn.execute(_CLOSE_EXPIRED, {"account_id": account_id, "id": grant_id, "entry_id": entry_id, "cents": cents})


def _grant(row) -> Grant:
    return Grant(id=row["id"], billing_account_id=row["billing_account_id"], source=row["source"],
                 category=row["category"], amount_cents=row["amount_cents"], remaining_cents=row["remaining_cents"],
                 priority=row["priority"], expires_at=row["expires_at"], status=row["status"],
                 created_at=row["created_at"], entry_id=row["entry_id"])


def page(conn: Connection, account_id: str, *, limit: int, before_entry_id: int | None = None,
         status: str | None = None) -> list[Grant]:
    """The account's grants newest first (by their credit entry), strictly older than before_entry_id."""
    query = select(grants).where(_g.billing_account_id == account_id)
    if before_entry_id is not None:
        query = query.where(_g.entry_id < before_entry_id)
    if status is not None:
        query = query.where(_g.status == status)
    return [_grant(row) for row in conn.execute(query.order_by(_g.entry_id.desc()).limit(limit)).mappings()]


@dataclass(frozen=True)
class Split:
    """An account's active grants at one moment: by category, and the next expiry."""
    paid_cents: int
    promotional_cents: int
    next_expiry_cents: int
    next_expiry_at: datetime | None
