"""Ledger invariant checks, in SQL over the whole ledger."""
from datetime import timedelta

from sqlalchemy import Connection, text

from domain.store import operations

_BALANCE_MISMATCH = text("""
SELECT a.id, a.balance_cents, COALESCE(s.total, 0) AS total
FROM billing_accounts a
LEFT JOIN (SELECT billing_account_id, SUM(amount_cents) AS total FROM ledger_entries
           GROUP BY billing_account_id) s ON s.billing_account_id = a.id
WHERE a.balance_cents <> COALESCE(s.total, 0)
ORDER BY a.id
""")

_BROKEN_CHAIN = text("""
SELECT id, billing_account_id FROM (
    SELECT id, billing_account_id, amount_cents, balance_after_cents,
           LAG(balance_after_cents, 1, 0::bigint) OVER (PARTITION BY billing_account_id ORDER BY id) AS before
    FROM ledger_entries) chained
WHERE balance_after_cents <> before + amount_cents
ORDER BY id
""")

# While the balance is >= 0 it is what the active grants hold; below zero they hold nothing.
_GRANTS_MISMATCH = text("""
SELECT a.id, a.balance_cents, COALESCE(g.total, 0) AS granted
FROM billing_accounts a
LEFT JOIN (SELECT billing_account_id, SUM(remaining_cents) AS total FROM grants WHERE status = 'active'
           GROUP BY billing_account_id) g ON g.billing_account_id = a.id
WHERE COALESCE(g.total, 0) <> GREATEST(a.balance_cents, 0)
ORDER BY a.id
""")

_CREDIT_WITHOUT_GRANT = text("""
SELECT e.id, e.billing_account_id FROM ledger_entries e
WHERE e.amount_cents > 0 AND NOT EXISTS (
    SELECT 1 FROM grants g WHERE g.billing_account_id = e.billing_account_id AND g.entry_id = e.id)
ORDER BY e.id
""")

# No ORDER BY: sorted in Python, it is the few grants found. With one, PostgreSQL walked every grant in the primary
# key's order, a random heap read each (35 s for 10,000,000 grants; unordered it hashes them in one pass).
_DRAWS_MISMATCH = text("""
SELECT g.billing_account_id, g.id FROM grants g
LEFT JOIN (SELECT billing_account_id, grant_id, CAST(SUM(amount_cents) AS bigint) AS drawn FROM grant_draws
           GROUP BY billing_account_id, grant_id) d ON d.billing_account_id = g.billing_account_id AND d.grant_id = g.id
WHERE g.remaining_cents <> g.opened_cents - COALESCE(d.drawn, 0)
""")

# What an account's holds reserve is what its unsettled holds hold; a settled capture debited exactly its amount.
_HELD_MISMATCH = text("""
SELECT a.id, a.held_cents, COALESCE(h.total, 0) AS reserved
FROM billing_accounts a
LEFT JOIN (SELECT billing_account_id, SUM(amount_cents) AS total FROM holds WHERE settled_at IS NULL
           GROUP BY billing_account_id) h ON h.billing_account_id = a.id
WHERE a.held_cents <> COALESCE(h.total, 0)
ORDER BY a.id
""")

_CAPTURE_MISMATCH = text("""
SELECT h.billing_account_id, h.id FROM holds h
WHERE h.settled_at IS NOT NULL AND h.captured_cents > 0 AND NOT EXISTS (
    SELECT 1 FROM ledger_entries e WHERE e.billing_account_id = h.billing_account_id
    AND e.idempotency_key = 'hold:' || h.id AND e.amount_cents = -h.captured_cents)
ORDER BY h.billing_account_id, h.id
""")

# Written by the statement that found both (migration 0017: no foreign keys).
_HOLD_ORPHANS = text("""
SELECT h.billing_account_id, h.id FROM holds h
WHERE NOT EXISTS (SELECT 1 FROM billing_accounts a WHERE a.id = h.billing_account_id)
   OR NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = h.workspace_id)
ORDER BY h.billing_account_id, h.id
""")

# An auto top-up is credited exactly when it succeeded: one stripe_topup entry of its amount under its key.
_TOP_UP_MISMATCH = text("""
SELECT t.billing_account_id, t.id, t.status, e.amount_cents FROM auto_top_ups t
LEFT JOIN ledger_entries e ON e.billing_account_id = t.billing_account_id AND e.idempotency_key = 'auto_top_up:' || t.id
WHERE (t.status = 'succeeded') <> (e.id IS NOT NULL)
   OR (e.id IS NOT NULL AND (e.amount_cents <> t.amount_cents OR e.kind <> 'stripe_topup'))
ORDER BY t.billing_account_id, t.id
""")

_TOP_UP_STUCK = text("""
SELECT billing_account_id, id, status FROM auto_top_ups
WHERE status IN ('pending', 'processing') AND created_at < now() - :older_than
ORDER BY billing_account_id, id
""")


def without_time_limit(conn: Connection) -> None:
    """Lift the per-statement time limit for the rest of this transaction: the audit reads the whole ledger, which
    takes as long as the ledger is large (the limit is a request's, BILLING_DB_STATEMENT_TIMEOUT_MS)."""
    conn.execute(text("SET LOCAL statement_timeout = 0"))


def problems(conn: Connection, *, stuck_after: timedelta) -> list[str]:
    """One line per broken invariant; empty when the ledger is sound."""
    found = [f"account {row.id}: cached balance {row.balance_cents} != sum of entries {row.total}"
             for row in conn.execute(_BALANCE_MISMATCH)]
    found += [f"entry {row.id} of account {row.billing_account_id}: balance_after does not follow the previous entry"
              for row in conn.execute(_BROKEN_CHAIN)]
    found += [f"account {row.id}: balance {row.balance_cents} but its active grants hold {row.granted}"
              for row in conn.execute(_GRANTS_MISMATCH)]
    found += [f"entry {row.id} of account {row.billing_account_id}: a credit without its grant"
              for row in conn.execute(_CREDIT_WITHOUT_GRANT)]
    found += [f"grant {row.id} of account {row.billing_account_id}: remaining != opened - drawn"
              for row in sorted(conn.execute(_DRAWS_MISMATCH))]
    found += [f"account {row.id}: holds reserve {row.reserved} but held_cents is {row.held_cents}"
              for row in conn.execute(_HELD_MISMATCH)]
    found += [f"hold {row.id} of account {row.billing_account_id}: captured without its usage entry"
              for row in conn.execute(_CAPTURE_MISMATCH)]
    found += [f"hold {row.id} of account {row.billing_account_id}: its account or workspace does not exist"
              for row in conn.execute(_HOLD_ORPHANS)]
    found += [f"operation {op_id}: unfinished for more than {stuck_after}"
              for op_id in operations.stuck(conn, older_than=stuck_after)]
    found += [f"auto top-up {row.id} of account {row.billing_account_id}: {row.status} but credited "
              f"{row.amount_cents or 0} cents" for row in conn.execute(_TOP_UP_MISMATCH)]
    found += [f"auto top-up {row.id} of account {row.billing_account_id}: {row.status} for more than {stuck_after}"
              for row in conn.execute(_TOP_UP_STUCK, {"older_than": stuck_after})]
    return found


_REFUND_EXCESS = text("""
SELECT id, billing_account_id, (details->>'refundExcessCents')::bigint AS excess,
       ARRAY(SELECT jsonb_object_keys(details->'refundCharges') ORDER BY 1) AS charges
FROM checkouts
WHERE provider = 'stripe' AND (details->>'refundExcessCents')::bigint > 0
ORDER BY id
""")


def notices(conn: Connection) -> list[str]:
    """One line per fact an operator should act on that breaks no invariant: Stripe refunds beyond what their
    checkout credited (money gone at Stripe that the ledger never held, so it was not debited)."""
    return [f"notice: checkout {row.id} (account {row.billing_account_id}): Stripe refunded {row.excess} cents "
            f"more than it credited (charges {', '.join(row.charges)}); not debited"
            for row in conn.execute(_REFUND_EXCESS)]
