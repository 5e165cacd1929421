"""Hold SQL: reserve, capture, release, expire; billing_accounts.held_cents follows every hold that reserves.

A hold reserves from its creation until it settles (settled_at): released, expired, or its capture applied.
Statements that change what an account reserves hold its row locked, taken first (as postings do).
"""
from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, text

from domain.models import Hold, Operation
from domain.store import operations, spend
from domain.store.prepared import psycopg_style

_COLUMNS = ("h.billing_account_id, h.id, h.workspace_id, h.amount_cents, h.captured_cents, h.status, h.description, "
            "h.reference, h.expires_at, h.created_at, h.settled_at, h.capture_operation_id")


def _hold(row) -> Hold:
    return Hold(id=row["id"], workspace_id=row["workspace_id"], billing_account_id=row["billing_account_id"],
                amount_cents=row["amount_cents"], captured_cents=row["captured_cents"], status=row["status"],
                description=row["description"], reference=row["reference"], expires_at=row["expires_at"],
                created_at=row["created_at"], settled_at=row["settled_at"],
                capture_operation_id=row["capture_operation_id"])


# The workspace's default account reserves the amount only if what is available covers it and the workspace has no
# spend limit (RESERVE), or (RESERVE_WITHIN_LIMIT) the month's spending, what the workspace's holds reserve and this
# amount stay within its limit; the UPDATE locks the account row and re-checks the balance on it, so concurrent holds
# never reserve more than is available. A limit is checked under the workspace's spending lock
# (store.usage.lock_workspace); without one the account's row lock is all a hold needs, so it is one statement.
# Two statements rather than one with a flag: PostgreSQL keeps one plan for a prepared statement only while that
# generic plan's estimated cost stays near the cost of one planned for each call's values. The limit's sum over a
# workspace's unsettled holds, costed whatever the flag says, made the generic plan the dearer once the statistics
# counted five of them per workspace (two did not): from then on every creation was planned anew
# (tests/api/test_holds.py, "planned once").
_RESERVE = """
WITH reserved AS (
    UPDATE billing_accounts a SET held_cents = a.held_cents + :amount
    FROM workspaces w
    WHERE w.id = :workspace_id AND a.id = w.default_billing_account_id AND a.balance_cents - a.held_cents >= :amount
      AND {condition}
    RETURNING a.id
)
INSERT INTO holds AS h (billing_account_id, id, workspace_id, amount_cents, description, reference, expires_at,
                        created_by, idempotency_scope)
SELECT reserved.id, :id, :workspace_id, :amount, :description, :reference,
       clock_timestamp() + make_interval(secs => :seconds), :created_by, :scope
FROM reserved
RETURNING {columns}
"""
RESERVE = psycopg_style(_RESERVE.format(condition=f"{spend.LIMIT} IS NULL", columns=_COLUMNS))
RESERVE_WITHIN_LIMIT = psycopg_style(_RESERVE.format(
    condition=f"({spend.LIMIT} IS NULL OR {spend.SPENT} + {spend.RESERVED} + :amount <= {spend.LIMIT})",
    columns=_COLUMNS))
_WHY_NOT = text("""
SELECT a.balance_cents - a.held_cents AS available FROM workspaces w
JOIN billing_accounts a ON a.id = w.default_billing_account_id WHERE w.id = :workspace_id
""")


def reserve(driver: psycopg.Connection, *, hold_id: str, workspace_id: str, amount_cents: int, seconds: int,
            description: str, reference: str | None, created_by: str, scope: str | None,
            limited: bool) -> Hold | None:
    """A new hold on the workspace's default account; None when it was refused (see available()), or, not
    `limited`, when the workspace has a spend limit (reserve under its spending lock, `limited`, instead)."""
    row = driver.cursor(row_factory=dict_row).execute(RESERVE_WITHIN_LIMIT if limited else RESERVE, {
        "id": hold_id, "workspace_id": workspace_id, "amount": amount_cents, "seconds": seconds,
        "description": description, "reference": reference, "created_by": created_by, "scope": scope},
        prepare=True).fetchone()
    return _hold(row) if row else None


def available(conn: Connection, workspace_id: str) -> int | None:
    """What the workspace's default account has available (balance less holds); None: no such workspace."""
    return conn.execute(_WHY_NOT, {"workspace_id": workspace_id}).scalar()


_BY_SCOPE = text(f"SELECT {_COLUMNS} FROM holds h WHERE h.created_by = :created_by AND h.idempotency_scope = :scope")
_GET = text(f"SELECT {_COLUMNS} FROM holds h WHERE h.workspace_id = :workspace_id AND h.id = :id")
_OF_ACCOUNT = text(f"SELECT {_COLUMNS} FROM holds h WHERE h.billing_account_id = :account_id AND h.id = :id "
                   "FOR UPDATE")


def by_scope(conn: Connection, created_by: str, scope: str) -> Hold | None:
    row = conn.execute(_BY_SCOPE, {"created_by": created_by, "scope": scope}).mappings().first()
    return _hold(row) if row else None


def get(conn: Connection, workspace_id: str, hold_id: str) -> Hold | None:
    row = conn.execute(_GET, {"workspace_id": workspace_id, "id": hold_id}).mappings().first()
    return _hold(row) if row else None


def locked(conn: Connection, account_id: str, hold_id: str) -> Hold | None:
    """The hold, locked, on an account this transaction holds locked."""
    row = conn.execute(_OF_ACCOUNT, {"account_id": account_id, "id": hold_id}).mappings().first()
    return _hold(row) if row else None


# Mark the hold captured and queue its capture, in one statement, when it can be captured: active, not expired, not
# captured before, the amount within what it holds. The UPDATE locks the hold's row; a concurrent capture of the same
# hold waits for it, then finds it captured (PostgreSQL re-checks the WHERE on the row it waited for) and queues
# nothing. No row: nothing was queued, and the caller reads the hold to tell why. The hold reserves until the
# operation is applied.
_QUEUE_CAPTURE = psycopg_style(f"""
WITH marked AS (
    UPDATE holds h SET status = CASE WHEN CAST(:captured AS bigint) > 0 THEN 'captured' ELSE 'released' END,
                       captured_cents = :captured, capture_operation_id = :operation_id
    WHERE h.workspace_id = :workspace_id AND h.id = :id AND h.status = 'active' AND h.capture_operation_id IS NULL
      AND h.expires_at > clock_timestamp() AND CAST(:captured AS bigint) <= h.amount_cents
    RETURNING h.id, h.workspace_id, h.billing_account_id
)
INSERT INTO operations (id, kind, caller, workspace_id, billing_account_id, payload, trace_parent)
SELECT :operation_id, :kind, :caller, marked.workspace_id, marked.billing_account_id,
       jsonb_build_object('holdId', marked.id, 'amountCents', CAST(:captured AS bigint)), :trace_parent
FROM marked
RETURNING {", ".join(operations.COLUMNS)}
""")


def queue_capture(driver: psycopg.Connection, workspace_id: str, hold_id: str, captured_cents: int, *,
                  operation_id: str, kind: str, caller: str, trace_parent: str | None) -> Operation | None:
    """Queue the hold's capture of `captured_cents` (0: a release) as an operation and mark the hold; None when
    nothing was queued: no such hold, or one that cannot be captured (see get())."""
    row = driver.cursor(row_factory=dict_row).execute(_QUEUE_CAPTURE, {
        "workspace_id": workspace_id, "id": hold_id, "captured": captured_cents, "operation_id": operation_id,
        "kind": kind, "caller": caller, "trace_parent": trace_parent}, prepare=True).fetchone()
    return operations.from_row(row) if row else None


# The holds stop reserving: each account's held_cents goes down by their amounts, once per hold.
_SETTLE = text(f"""
WITH settled AS (
    UPDATE holds h SET settled_at = clock_timestamp(), status = COALESCE(CAST(:status AS text), h.status)
    FROM unnest(CAST(:accounts AS text[]), CAST(:ids AS text[])) AS v(account_id, id)
    WHERE h.billing_account_id = v.account_id AND h.id = v.id AND h.settled_at IS NULL
      AND (CAST(:status AS text) IS NULL OR h.status = 'active')
    RETURNING {_COLUMNS}
), unheld AS (
    UPDATE billing_accounts a SET held_cents = a.held_cents - s.amount_cents
    FROM (SELECT billing_account_id, SUM(amount_cents) AS amount_cents FROM settled GROUP BY billing_account_id) s
    WHERE a.id = s.billing_account_id
)
SELECT * FROM settled
""")


def settle(conn: Connection, account_id: str, hold_id: str, status: str | None = None) -> Hold | None:
    """Stop the hold reserving: an active one, moved to `status` (released, expired); without a status, one whose
    capture is applied. None when it stopped already (or, with a status, is no longer active)."""
    return settle_many(conn, [(account_id, hold_id)], status).get(hold_id)


def settle_many(conn: Connection, holds: list[tuple[str, str]], status: str | None = None) -> dict[str, Hold]:
    """settle() for many (account id, hold id) in one statement: the holds it stopped, by id."""
    if not holds:  # a batch of credits without captures: no round trip
        return {}
    rows = conn.execute(_SETTLE, {"accounts": [account for account, _ in holds], "ids": [hold for _, hold in holds],
                                  "status": status}).mappings()
    return {row["id"]: _hold(row) for row in rows}


# holds_expiring holds what still reserves (settled_at IS NULL): a hold whose capture is queued is among them, and
# left to its capture by the status.
_DUE = text("""
SELECT billing_account_id, id FROM holds WHERE settled_at IS NULL AND status = 'active' AND expires_at <= now()
ORDER BY expires_at LIMIT :limit
""")


def due(conn: Connection, *, limit: int) -> list[tuple[str, str]]:
    """(account, hold) of active holds past their expiresAt, soonest first."""
    return [(row.billing_account_id, row.id) for row in conn.execute(_DUE, {"limit": limit})]


_PAGE = text(f"""
SELECT {_COLUMNS} FROM holds h
WHERE h.workspace_id = :workspace_id AND (CAST(:status AS text) IS NULL OR h.status = :status)
  AND (CAST(:before_at AS timestamptz) IS NULL OR (h.created_at, h.id) < (:before_at, :before_id))
ORDER BY h.created_at DESC, h.id DESC LIMIT :limit
""")


def page(conn: Connection, workspace_id: str, *, limit: int, status: str | None,
         before: tuple[datetime, str] | None) -> list[Hold]:
    """The workspace's holds newest first, strictly before `before` (created_at, id)."""
    before_at, before_id = before or (None, None)
    rows = conn.execute(_PAGE, {"workspace_id": workspace_id, "status": status, "before_at": before_at,
                                "before_id": before_id, "limit": limit}).mappings()
    return [_hold(row) for row in rows]
