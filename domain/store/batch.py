"""SQL for applying queued credits in batches: account locks taken without waiting, and the tiers of
many accounts read and stored by one statement each."""
import json

from sqlalchemy import Connection, text

# Lock what is free, in id order, skipping (never waiting on) accounts another transaction holds. NO KEY
# UPDATE, as every account lock here: it still serialises postings, but lets a foreign-key check on the
# account (an account_tiers row inserted elsewhere) through, so the two cannot deadlock.
_LOCK_FREE_ACCOUNTS = text(
    "SELECT id FROM billing_accounts WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED")


def lock_free_accounts(conn: Connection, account_ids: list[str]) -> set[str]:
    """Row-lock those of the accounts no other transaction holds; the ids locked."""
    if not account_ids:
        return set()
    return set(conn.execute(_LOCK_FREE_ACCOUNTS, {"ids": sorted(account_ids)}).scalars())


# domain/store/tiers.py's inputs, for many accounts at once: one snapshot per account.
_TIER_INPUTS = text("""
SELECT a.id, a.balance_cents,
       COALESCE((SELECT SUM(e.amount_cents) FROM ledger_entries e WHERE e.billing_account_id = a.id
                 AND e.kind IN ('stripe_topup', 'x402_topup', 'refund')), 0) AS paid_cents,
       COALESCE((SELECT MAX(e.id) FROM ledger_entries e WHERE e.billing_account_id = a.id), 0) AS last_entry_id
FROM billing_accounts a WHERE a.id = ANY(CAST(:ids AS text[]))
""")

# domain/store/tiers.py's save, for many accounts: a computation from an older ledger state never wins. The rows
# come as JSON (a text[] of reasons, which need quotes, costs psycopg a regex per element).
_SAVE_TIERS = text("""
INSERT INTO account_tiers AS t (billing_account_id, tier, reason, paid_cents, balance_cents, as_of_entry_id,
                                computed_at)
SELECT v.id, v.tier, v.reason, v.paid, v.balance, v.as_of, now()
FROM json_to_recordset(CAST(:rows AS json)) AS v(id text, tier text, reason text, paid bigint, balance bigint,
                                                 as_of bigint)
ON CONFLICT (billing_account_id) DO UPDATE
SET tier = EXCLUDED.tier, reason = EXCLUDED.reason, paid_cents = EXCLUDED.paid_cents,
    balance_cents = EXCLUDED.balance_cents, as_of_entry_id = EXCLUDED.as_of_entry_id, computed_at = now()
WHERE t.as_of_entry_id <= EXCLUDED.as_of_entry_id
""")


def tier_inputs(conn: Connection, account_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """(balance, paid, newest entry id) by account, for those that exist."""
    rows = conn.execute(_TIER_INPUTS, {"ids": sorted(account_ids)})
    return {row.id: (int(row.balance_cents), int(row.paid_cents), int(row.last_entry_id)) for row in rows}


def save_tiers(conn: Connection, tiers: dict[str, tuple[str, str, int, int, int]]) -> None:
    """Store (tier, reason, paid, balance, as_of_entry_id) by account."""
    if not tiers:
        return
    rows = [{"id": account_id, "tier": tier, "reason": reason, "paid": paid, "balance": balance, "as_of": as_of}
            for account_id, (tier, reason, paid, balance, as_of) in sorted(tiers.items())]
    conn.execute(_SAVE_TIERS, {"rows": json.dumps(rows)})
