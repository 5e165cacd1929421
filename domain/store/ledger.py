"""Ledger SQL: one statement per posting, keyset pages, window totals."""
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select, text

from domain.errors import InsufficientFunds, NotFound
from domain.models import Entry, KindTotal
from domain.names import EntryKind
from domain.store.tables import billing_accounts, ledger_entries
from domain.store import webhook_events
from domain.store.uow import note_postings

# Lock the account row, insert the entry under its unique key, move the cached balance only if
# the entry went in: all in one statement, so balance and entries cannot drift apart. A credit always goes
# in, also one that leaves a negative balance (after a refund) still below zero.
_POST = text("""
WITH inserted AS (
    INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents,
                                balance_after_cents, description, reference, idempotency_key)
    SELECT a.id, :workspace_id, :kind, :amount, a.balance_cents + :amount, :description,
           :reference, :key
    FROM billing_accounts a
    WHERE a.id = :account_id AND (:allow_negative OR :amount > 0 OR a.balance_cents + :amount >= 0)
    FOR NO KEY UPDATE
    ON CONFLICT (billing_account_id, idempotency_key) DO NOTHING
    RETURNING *
)
UPDATE billing_accounts SET balance_cents = inserted.balance_after_cents
FROM inserted WHERE billing_accounts.id = inserted.billing_account_id
RETURNING inserted.*
""")


_LOCK_ACCOUNT = text("SELECT balance_cents FROM billing_accounts WHERE id = :account_id FOR NO KEY UPDATE")


def lock_account(conn: Connection, account_id: str) -> int | None:
    """Lock the account row as a posting would; its balance, or None when there is no such account."""
    return conn.execute(_LOCK_ACCOUNT, {"account_id": account_id}).scalar()


@dataclass(frozen=True)
class Posting:
    entry: Entry
    created: bool  # False when the key had been posted before


def post(conn: Connection, account_id: str, amount_cents: int, *, kind: str, key: str,
         workspace_id: str | None = None, description: str = "", reference: str | None = None,
         allow_negative: bool = False) -> Posting:
    """Post one entry exactly once per key; a debit below zero raises unless allowed."""
    row = conn.execute(_POST, {
        "account_id": account_id, "amount": amount_cents, "kind": kind, "key": key,
        "workspace_id": workspace_id, "description": description, "reference": reference,
        "allow_negative": allow_negative,
    }).mappings().first()
    if row is not None:
        note_postings(conn, [(kind, amount_cents)])
        webhook_events.note_entries(conn, [(account_id, row["id"], amount_cents, row["balance_after_cents"])])
        return Posting(_entry(row), created=True)
    existing = find(conn, account_id, key)
    if existing is not None:
        return Posting(existing, created=False)
    balance = conn.execute(select(billing_accounts.c.balance_cents)
                           .where(billing_accounts.c.id == account_id)).scalar()
    if balance is None:
        raise NotFound("billing account not found")
    raise InsufficientFunds(f"balance {balance} cents cannot cover {-amount_cents} cents",
                            balance_cents=balance)


def find(conn: Connection, account_id: str, key: str) -> Entry | None:
    """The account's entry posted under `key`, if any."""
    row = conn.execute(select(ledger_entries).where(ledger_entries.c.billing_account_id == account_id,
                                                    ledger_entries.c.idempotency_key == key)).mappings().first()
    return _entry(row) if row else None


# Many postings (credits, or debits allowed below zero) on accounts this transaction holds locked, in one
# statement: each entry's balance_after is its account's balance plus the running sum of that account's postings
# in batch order, entries take ids in that order (so the chain reads right), and each account's cached balance
# moves to its last entry's. Keys posted before are left out (post() and find() tell what they were). The entries
# come as JSON rows, in batch order: psycopg dumps a text[] element by element, with a regex for each text that
# needs quotes (a description).
_POST_MANY = text("""
WITH v AS (
    SELECT * FROM ROWS FROM (json_to_recordset(CAST(:entries AS json)) AS (
        account_id text, amount bigint, key text, workspace_id text, description text, reference text))
    WITH ORDINALITY AS v(account_id, amount, key, workspace_id, description, reference, ord)
), fresh AS (
    SELECT v.*, a.balance_cents + SUM(v.amount) OVER (PARTITION BY v.account_id ORDER BY v.ord) AS balance_after
    FROM v JOIN billing_accounts a ON a.id = v.account_id
    WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.billing_account_id = v.account_id
                                                         AND e.idempotency_key = v.key)
), inserted AS (
    INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents,
                                description, reference, idempotency_key)
    SELECT account_id, workspace_id, :kind, amount, balance_after, description, reference, key
    FROM fresh ORDER BY ord
    RETURNING *
), moved AS (
    UPDATE billing_accounts a SET balance_cents = last.balance_after_cents
    FROM (SELECT DISTINCT ON (billing_account_id) billing_account_id, balance_after_cents
          FROM inserted ORDER BY billing_account_id, id DESC) AS last
    WHERE a.id = last.billing_account_id
)
SELECT * FROM inserted
""")


@dataclass(frozen=True)
class NewEntry:
    account_id: str
    amount_cents: int  # a credit > 0, a debit < 0 (the batch does not refuse one below zero)
    key: str
    workspace_id: str | None = None
    description: str = ""
    reference: str | None = None


def post_many(conn: Connection, entries: list[NewEntry], *, kind: str) -> dict[str, Entry]:
    """Post entries on accounts this transaction holds locked, in one statement, in the order given: the new
    entries by key. A key posted before, or an account that does not exist, has none."""
    if not entries:
        return {}
    rows = conn.execute(_POST_MANY, {"entries": json.dumps([
        {"account_id": e.account_id, "amount": e.amount_cents, "key": e.key, "workspace_id": e.workspace_id,
         "description": e.description, "reference": e.reference} for e in entries]), "kind": kind}).mappings().all()
    note_postings(conn, [(kind, row["amount_cents"]) for row in rows])
    webhook_events.note_entries(conn, [(row["billing_account_id"], row["id"], row["amount_cents"],
                                        row["balance_after_cents"]) for row in rows])
    return {row["idempotency_key"]: _entry(row) for row in rows}


def _entry(row) -> Entry:
    return Entry(id=row["id"], billing_account_id=row["billing_account_id"],
                 workspace_id=row["workspace_id"], kind=row["kind"],
                 amount_cents=row["amount_cents"], balance_after_cents=row["balance_after_cents"],
                 description=row["description"], reference=row["reference"],
                 created_at=row["created_at"])


def page(conn: Connection, account_id: str, *, limit: int, before_id: int | None = None,
         kind: str | None = None, since: datetime | None = None,
         until: datetime | None = None) -> list[Entry]:
    """Entries newest first, strictly older than before_id; limit+1 asks whether more exist."""
    e = ledger_entries.c
    query = select(ledger_entries).where(e.billing_account_id == account_id)
    if before_id is not None:
        query = query.where(e.id < before_id)
    if kind is not None:
        query = query.where(e.kind == kind)
    if since is not None:
        query = query.where(e.created_at >= since)
    if until is not None:
        query = query.where(e.created_at < until)
    rows = conn.execute(query.order_by(e.id.desc()).limit(limit)).mappings()
    return [_entry(row) for row in rows]


@dataclass(frozen=True)
class WindowTotals:
    by_kind: dict[str, KindTotal]
    credited_cents: int
    debited_cents: int  # a positive number: the sum of the debits' magnitudes
    count: int
    last_at: datetime | None


def window_totals(conn: Connection, account_id: str, *, since: datetime | None,
                  until: datetime | None) -> WindowTotals:
    """Counts and sums of an account's entries within [since, until), per kind and in all."""
    e = ledger_entries.c
    credited = func.coalesce(func.sum(e.amount_cents).filter(e.amount_cents > 0), 0)
    debited = func.coalesce(func.sum(e.amount_cents).filter(e.amount_cents < 0), 0)
    query = (select(e.kind, func.count(), credited, debited, func.max(e.created_at))
             .where(e.billing_account_id == account_id).group_by(e.kind))
    if since is not None:
        query = query.where(e.created_at >= since)
    if until is not None:
        query = query.where(e.created_at < until)
    rows = conn.execute(query).all()
    return WindowTotals(
        by_kind={kind: KindTotal(count=n, amount_cents=int(c + d)) for kind, n, c, d, _ in rows},
        credited_cents=sum(int(row[2]) for row in rows),
        debited_cents=-sum(int(row[3]) for row in rows),
        count=sum(row[1] for row in rows),
        last_at=max((row[4] for row in rows), default=None),
    )


def refunded_cents(conn: Connection, account_id: str, references: list[str]) -> int:
    """How much has been refunded so far against these references (Stripe charges), as a positive number."""
    e = ledger_entries.c
    total = conn.execute(select(func.coalesce(func.sum(e.amount_cents), 0)).where(
        e.billing_account_id == account_id, e.kind == EntryKind.REFUND, e.reference.in_(references))).scalar()
    return -int(total)
