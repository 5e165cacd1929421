"""Workspace and membership SQL."""
from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.models import Workspace
from domain.store.tables import workspace_members, workspaces

_w = workspaces.c
_m = workspace_members.c


def _workspace(row) -> Workspace:
    return Workspace(id=row["id"], name=row["name"], owner_user_id=row["owner_user_id"],
                     default_billing_account_id=row["default_billing_account_id"],
                     created_at=row["created_at"])


def insert_workspace(conn: Connection, workspace_id: str, name: str, owner_user_id: str,
                     default_account_id: str) -> Workspace:
    row = conn.execute(workspaces.insert().values(
        id=workspace_id, name=name, owner_user_id=owner_user_id,
        default_billing_account_id=default_account_id).returning(workspaces)).mappings().one()
    return _workspace(row)


# The workspace and the user's role in it (NULL: not a member), in one statement; locked: the workspace row.
_WITH_ROLE = {
    lock: text(f"""
SELECT w.id, w.name, w.owner_user_id, w.default_billing_account_id, w.created_at, m.role
FROM workspaces w LEFT JOIN workspace_members m ON m.workspace_id = w.id AND m.user_id = :user_id
WHERE w.id = :workspace_id {lock}""")
    for lock in ("", "FOR UPDATE OF w")
}


def with_role(conn: Connection, workspace_id: str, user_id: str | None, *,
              for_update: bool = False) -> tuple[Workspace, str | None] | None:
    """The workspace and the user's role in it (None: not a member); None when there is no workspace."""
    row = conn.execute(_WITH_ROLE["FOR UPDATE OF w" if for_update else ""],
                       {"workspace_id": workspace_id, "user_id": user_id}).mappings().first()
    return (_workspace(row), row["role"]) if row else None


def of_member(conn: Connection, user_id: str) -> list[Workspace]:
    query = (select(workspaces).join(workspace_members, _m.workspace_id == _w.id)
             .where(_m.user_id == user_id).order_by(_w.created_at.desc(), _w.id.desc()))
    return [_workspace(row) for row in conn.execute(query).mappings()]


def set_default(conn: Connection, workspace_id: str, account_id: str) -> Workspace:
    row = conn.execute(update(workspaces).where(_w.id == workspace_id)
                       .values(default_billing_account_id=account_id)
                       .returning(workspaces)).mappings().one()
    return _workspace(row)


def put_member(conn: Connection, workspace_id: str, user_id: str, role: str) -> None:
    """Add a member, or change the role of one."""
    stmt = pg_insert(workspace_members).values(workspace_id=workspace_id, user_id=user_id, role=role)
    stmt = stmt.on_conflict_do_update(index_elements=["workspace_id", "user_id"],
                                      set_={"role": role})
    conn.execute(stmt)
