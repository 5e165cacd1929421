"""Balance SQL: the current balance with its grants in one statement per read, and the balance as of an instant
from the balance chain (the last entry at or before it, found by an index) and the grants' draw rows."""
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from domain.models import BillingAccount

# The account's active grants by category, and the soonest expiry with what it takes (grants_draw_order finds
# the account's active grants).
SPLIT = """
LEFT JOIN LATERAL (
    SELECT COALESCE(SUM(g.remaining_cents) FILTER (WHERE g.category = 'paid'), 0) AS paid_cents,
           COALESCE(SUM(g.remaining_cents) FILTER (WHERE g.category = 'promotional'), 0) AS promotional_cents
    FROM grants g WHERE g.billing_account_id = a.id AND g.status = 'active'
) s ON true
LEFT JOIN LATERAL (
    SELECT g.expires_at AS next_expiry_at, SUM(g.remaining_cents) AS next_expiry_cents
    FROM grants g WHERE g.billing_account_id = a.id AND g.status = 'active' AND g.expires_at IS NOT NULL
    GROUP BY g.expires_at ORDER BY g.expires_at LIMIT 1
) x ON true
"""
_ACCOUNT_COLUMNS = ("a.id, a.name, a.owner_user_id, a.is_user_default, a.currency, a.balance_cents, a.created_at, "
                    "a.held_cents, s.paid_cents, s.promotional_cents, x.next_expiry_at, x.next_expiry_cents")
_OF_ACCOUNT = text(f"SELECT {_ACCOUNT_COLUMNS} FROM billing_accounts a {SPLIT} WHERE a.id = :account_id")



@dataclass(frozen=True)
class Grants:
    """What the active grants of an account hold at one moment."""
    paid_cents: int = 0
    promotional_cents: int = 0
    next_expiry_at: datetime | None = None
    next_expiry_cents: int = 0


@dataclass(frozen=True)
class Current:
    account: BillingAccount
    grants: Grants
    held_cents: int  # what the account's unsettled holds reserve


def _current(row) -> Current:
    account = BillingAccount(id=row["id"], name=row["name"], owner_user_id=row["owner_user_id"],
                             is_user_default=row["is_user_default"], currency=row["currency"],
                             balance_cents=row["balance_cents"], created_at=row["created_at"])
    return Current(account, Grants(int(row["paid_cents"]), int(row["promotional_cents"]), row["next_expiry_at"],
                                   int(row["next_expiry_cents"] or 0)), int(row["held_cents"]))


def of_account(conn: Connection, account_id: str) -> Current | None:
    row = conn.execute(_OF_ACCOUNT, {"account_id": account_id}).mappings().first()
    return _current(row) if row else None


# The last entry at or before the instant (ledger_entries_account_created, one index probe), and the grants
# open then: made by an entry up to it and not closed by one up to it, each with what its last draw up to that
# entry left (or what it opened with). Holds reserving then: made by then and not settled by then; a hold lives
# at most HOLD_MAX_SECONDS before the beat job settles it (within a minute, while beat runs).
HOLD_MAX_SECONDS = 604800 + 86400
_HELD_AS_OF = text("""
SELECT COALESCE(SUM(amount_cents), 0) FROM holds
WHERE billing_account_id = :account_id AND created_at <= :as_of
  AND created_at > CAST(:as_of AS timestamptz) - make_interval(secs => :window)
  AND (settled_at IS NULL OR settled_at > :as_of)
""")
_AS_OF = text("""
WITH last AS (
    SELECT id, balance_after_cents FROM ledger_entries
    WHERE billing_account_id = :account_id AND created_at <= :as_of
    ORDER BY created_at DESC, id DESC LIMIT 1
), open AS (
    SELECT g.category, g.expires_at,
           COALESCE((SELECT d.remaining_after_cents FROM grant_draws d
                     WHERE d.billing_account_id = :account_id AND d.grant_id = g.id AND d.entry_id <= last.id
                     ORDER BY d.entry_id DESC LIMIT 1), g.opened_cents) AS cents
    FROM last JOIN grants g ON g.billing_account_id = :account_id AND g.entry_id <= last.id
    WHERE g.closed_entry_id IS NULL OR g.closed_entry_id > last.id
), next AS (
    SELECT expires_at, SUM(cents) AS cents FROM open WHERE expires_at IS NOT NULL
    GROUP BY expires_at ORDER BY expires_at LIMIT 1
)
SELECT last.balance_after_cents,
       (SELECT COALESCE(SUM(cents) FILTER (WHERE category = 'paid'), 0) FROM open) AS paid_cents,
       (SELECT COALESCE(SUM(cents) FILTER (WHERE category = 'promotional'), 0) FROM open) AS promotional_cents,
       (SELECT expires_at FROM next) AS next_expiry_at, (SELECT cents FROM next) AS next_expiry_cents
FROM last
""")


def as_of(conn: Connection, account_id: str, instant: datetime) -> tuple[int, Grants]:
    """(balance, grants) right after the last entry created at or before `instant`; (0, none) before any."""
    row = conn.execute(_AS_OF, {"account_id": account_id, "as_of": instant}).mappings().first()
    if row is None:
        return 0, Grants()
    return int(row["balance_after_cents"]), Grants(int(row["paid_cents"]), int(row["promotional_cents"]),
                                                   row["next_expiry_at"], int(row["next_expiry_cents"] or 0))


def held_as_of(conn: Connection, account_id: str, instant: datetime) -> int:
    """What the account's holds reserved at `instant`."""
    return int(conn.execute(_HELD_AS_OF, {"account_id": account_id, "as_of": instant,
                                          "window": HOLD_MAX_SECONDS}).scalar())
