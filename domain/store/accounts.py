"""Billing account and workspace-link SQL."""

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.models import BillingAccount, LinkedAccount
from domain.store.tables import billing_accounts, workspace_billing_accounts, workspaces

_a = billing_accounts.c
_l = workspace_billing_accounts.c


def _account(row) -> BillingAccount:
    return BillingAccount(id=row["id"], name=row["name"], owner_user_id=row["owner_user_id"],
                          is_user_default=row["is_user_default"], currency=row["currency"],
                          balance_cents=row["balance_cents"], created_at=row["created_at"])


def insert_account(conn: Connection, account_id: str, owner_user_id: str, name: str, *,
                   is_user_default: bool = False) -> BillingAccount | None:
    """Insert an account; for a user default (whose id is made from the user's), None when it exists."""
    stmt = pg_insert(billing_accounts).values(id=account_id, owner_user_id=owner_user_id, name=name,
                                              is_user_default=is_user_default)
    if is_user_default:
        stmt = stmt.on_conflict_do_nothing(index_elements=["id"])
    row = conn.execute(stmt.returning(billing_accounts)).mappings().first()
    return _account(row) if row else None


def get(conn: Connection, account_id: str) -> BillingAccount | None:
    row = conn.execute(select(billing_accounts).where(_a.id == account_id)).mappings().first()
    return _account(row) if row else None


def user_default(conn: Connection, user_id: str) -> BillingAccount | None:
    row = conn.execute(select(billing_accounts).where(
        _a.owner_user_id == user_id, _a.is_user_default)).mappings().first()
    return _account(row) if row else None


def owned_by(conn: Connection, user_id: str) -> list[BillingAccount]:
    rows = conn.execute(select(billing_accounts).where(_a.owner_user_id == user_id)
                        .order_by(_a.created_at.desc(), _a.id.desc())).mappings()
    return [_account(row) for row in rows]


def linked_workspace_ids(conn: Connection, account_id: str) -> list[str]:
    return list(conn.execute(select(_l.workspace_id).where(_l.billing_account_id == account_id)
                             .order_by(_l.linked_at, _l.workspace_id)).scalars())


def linked_to(conn: Connection, workspace_id: str) -> list[LinkedAccount]:
    w = workspaces.c
    query = (select(billing_accounts, _l.linked_at, w.default_billing_account_id)
             .join(workspace_billing_accounts, _l.billing_account_id == _a.id)
             .join(workspaces, w.id == _l.workspace_id)
             .where(_l.workspace_id == workspace_id).order_by(_l.linked_at, _a.id))
    return [LinkedAccount(account=_account(row), linked_at=row["linked_at"],
                          is_workspace_default=row["default_billing_account_id"] == row["id"])
            for row in conn.execute(query).mappings()]


def link(conn: Connection, workspace_id: str, account_id: str) -> bool:
    """Link; False when the link already existed."""
    stmt = (pg_insert(workspace_billing_accounts)
            .values(workspace_id=workspace_id, billing_account_id=account_id)
            .on_conflict_do_nothing().returning(_l.workspace_id))
    return conn.execute(stmt).first() is not None


def unlink(conn: Connection, workspace_id: str, account_id: str) -> bool:
    stmt = delete(workspace_billing_accounts).where(
        _l.workspace_id == workspace_id, _l.billing_account_id == account_id)
    return conn.execute(stmt).rowcount == 1


def is_linked(conn: Connection, workspace_id: str, account_id: str) -> bool:
    return conn.execute(select(_l.workspace_id).where(
        _l.workspace_id == workspace_id, _l.billing_account_id == account_id)).first() is not None
