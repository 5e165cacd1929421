"""The hottest reads (a balance, a page of transactions, a workspace's tier), on a bare psycopg connection.

Each is one statement that psycopg prepares once per connection (`prepare=True`): no SQLAlchemy execution
around it, and PostgreSQL plans it once. A caller known only by its API key (domain.models.KeyHolder) is
checked in the same statement, so such a read is one round trip to the database where the key lookup and
the read were two. The connection comes from domain.store.uow.RawRead (autocommit, on the read engine).
"""
import re
from dataclasses import dataclass
from datetime import datetime

from psycopg import Connection

from domain.models import BillingAccount
from domain.store import balances

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def psycopg_style(sql: str) -> str:
    """A statement written with SQLAlchemy's :name parameters (shared fragments), in psycopg's %(name)s."""
    return _NAMED.sub(r"%(\1)s", sql)


_ACCOUNT_COLUMNS = "a.id, a.name, a.owner_user_id, a.is_user_default, a.currency, a.balance_cents, a.created_at"
_WORKSPACE_JOINS = """
LEFT JOIN workspace_members m ON m.workspace_id = w.id AND m.user_id = {user}
LEFT JOIN workspace_billing_accounts l
       ON l.workspace_id = w.id AND l.billing_account_id = COALESCE(%(account_id)s, w.default_billing_account_id)
LEFT JOIN billing_accounts a ON a.id = l.billing_account_id"""
# A balance read adds what the account's holds reserve and its active grants' split (domain.store.balances).
_BALANCE_COLUMNS = ", a.held_cents, s.paid_cents, s.promotional_cents, x.next_expiry_at, x.next_expiry_cents"


def _statements(columns: str, joins: str) -> tuple[str, str]:
    # The caller's user (from its live key), its role in the workspace, and the workspace's default (or named,
    # linked) account. No row: no live key has this hash. A null workspace id: no such workspace.
    for_key = f"""
SELECT k.user_id, w.id, m.role, {columns}
FROM api_keys k
LEFT JOIN workspaces w ON w.id = %(workspace_id)s{_WORKSPACE_JOINS.format(user="k.user_id")}{joins}
WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL"""
    # The same for a caller already known (a user, or the operator: user_id null, no role). No row: no workspace.
    for_user = f"""
SELECT %(user_id)s::varchar, w.id, m.role, {columns}
FROM workspaces w{_WORKSPACE_JOINS.format(user="%(user_id)s")}{joins}
WHERE w.id = %(workspace_id)s"""
    return for_key, for_user


WORKSPACE_FOR_KEY, WORKSPACE_FOR_USER = _statements(_ACCOUNT_COLUMNS, "")
CALLER_COLUMNS = 10  # those of WORKSPACE_FOR_KEY and _FOR_USER: user, workspace, role and the account's 7
BALANCE_FOR_KEY, BALANCE_FOR_USER = _statements(_ACCOUNT_COLUMNS + _BALANCE_COLUMNS, balances.SPLIT)


@dataclass(frozen=True)
class WorkspaceRead:
    user_id: str | None  # the caller's user; None for the operator
    workspace_found: bool
    role: str | None  # the user's role in the workspace; None: not a member
    account: BillingAccount | None  # None: that account is not linked to the workspace
    current: balances.Current | None = None  # with_balance: the account's holds and grants


def workspace_account(conn: Connection, workspace_id: str, account_id: str | None, *,
                      key_hash: bytes | None = None, user_id: str | None = None,
                      with_balance: bool = False) -> WorkspaceRead | None:
    """By key_hash (None: no live key has it) or by user_id (None: the operator)."""
    sql, params = caller_statement((BALANCE_FOR_KEY, BALANCE_FOR_USER) if with_balance else
                                   (WORKSPACE_FOR_KEY, WORKSPACE_FOR_USER),
                                   {"workspace_id": workspace_id, "account_id": account_id}, key_hash, user_id)
    return caller_read(conn.execute(sql, params, prepare=True).fetchone(), key_hash, user_id, with_balance)


def caller_statement(statements: tuple[str, str], params: dict, key_hash: bytes | None,
                     user_id: str | None) -> tuple[str, dict]:
    """The statement for a caller by key_hash, or by user_id (None: the operator), of a pair built on
    (WORKSPACE_FOR_KEY, WORKSPACE_FOR_USER), with its parameters."""
    if key_hash is not None:
        return statements[0], params | {"key_hash": key_hash}
    return statements[1], params | {"user_id": user_id}


def caller_read(row: tuple | None, key_hash: bytes | None, user_id: str | None,
                with_balance: bool = False) -> WorkspaceRead | None:
    """The caller's row of a statement built on WORKSPACE_FOR_KEY or _FOR_USER (its first CALLER_COLUMNS);
    None when no live key has key_hash."""
    if row is None:
        return None if key_hash is not None else WorkspaceRead(user_id=user_id, workspace_found=False, role=None,
                                                               account=None)
    account = BillingAccount(*row[3:CALLER_COLUMNS]) if row[3] is not None else None
    current = None
    if with_balance and account is not None:
        held, paid, promotional, expiry_at, expiry_cents = row[10:15]
        current = balances.Current(account, balances.Grants(int(paid), int(promotional), expiry_at,
                                                            int(expiry_cents or 0)), int(held))
    return WorkspaceRead(user_id=row[0], workspace_found=row[1] is not None, role=row[2], account=account,
                         current=current)


_PAGE = ("SELECT id, billing_account_id, workspace_id, kind, amount_cents, balance_after_cents, description, "
         "reference, created_at FROM ledger_entries WHERE billing_account_id = %(account_id)s{filters} "
         "ORDER BY id DESC LIMIT %(limit)s")
_FILTERS = (("before_id", " AND id < %(before_id)s"), ("kind", " AND kind = %(kind)s"),
            ("since", " AND created_at >= %(since)s"), ("until", " AND created_at < %(until)s"))
# One statement per combination of filters (16 at most), each prepared on first use: a generic plan that
# tested "filter IS NULL OR ..." would not use the (billing_account_id, id) index as well.
_PAGES: dict[tuple[bool, ...], str] = {}


def page_statement(before_id: bool = False, kind: bool = False, since: bool = False, until: bool = False) -> str:
    """The page's statement with these filters."""
    shape = (before_id, kind, since, until)
    sql = _PAGES.get(shape)
    if sql is None:
        sql = _PAGES.setdefault(shape, _PAGE.format(filters="".join(
            clause for (_, clause), used in zip(_FILTERS, shape) if used)))
    return sql


def page(conn: Connection, account_id: str, *, limit: int, before_id: int | None = None, kind: str | None = None,
         since: datetime | None = None, until: datetime | None = None) -> list[tuple]:
    """Entries newest first, strictly older than before_id, as rows of Entry's fields up to its public id (the
    caller names those it shows: a page is rendered from its rows, domain.views.transaction_row); limit+1
    asks whether more exist."""
    params = {"account_id": account_id, "limit": limit, "before_id": before_id, "kind": kind,
              "since": since, "until": until}
    sql = page_statement(*(params[name] is not None for name, _ in _FILTERS))
    return conn.execute(sql, params, prepare=True).fetchall()


TIER_OF_WORKSPACE = ("SELECT w.default_billing_account_id, t.tier FROM workspaces w "
                      "LEFT JOIN account_tiers t ON t.billing_account_id = w.default_billing_account_id "
                      "WHERE w.id = %s")


def tier_of_workspace(conn: Connection, workspace_id: str) -> tuple[str, str | None] | None:
    """(default account, its stored tier or None); None: no such workspace."""
    return conn.execute(TIER_OF_WORKSPACE, (workspace_id,), prepare=True).fetchone()


_USER_OF_KEY = "SELECT user_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL"


def user_of_key(conn: Connection, key_hash: bytes) -> str | None:
    row = conn.execute(_USER_OF_KEY, (key_hash,), prepare=True).fetchone()
    return row[0] if row else None
