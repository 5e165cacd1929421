"""Who may see and manage what. Unknown and foreign look the same: NotFound."""
from typing import NoReturn

from domain.errors import Forbidden, NotFound
from domain.ids import looks_like
from domain.models import BillingAccount, Caller, Membership
from domain.store import accounts, workspaces
from domain.store.uow import Connection


def workspace(conn: Connection, caller: Caller, workspace_id: str, *, manage: bool = False,
              operator_manages: bool = False, for_update: bool = False) -> Membership:
    """The workspace as the caller sees it; managing needs owner or admin (or an allowed operator)."""
    found = workspaces.with_role(conn, workspace_id, caller.user_id, for_update=for_update) \
        if looks_like("ws", workspace_id) else None
    if found is None:
        raise NotFound("workspace not found")
    found, role = found
    if caller.is_operator:
        if manage and not operator_manages:
            raise Forbidden("the operator key cannot do this; use a key of the workspace's owner or an admin")
        return Membership(found, role=None)
    if role is None:
        raise NotFound("workspace not found")
    if manage and role not in ("owner", "admin"):
        raise Forbidden("only the workspace's owner or an admin may manage its billing")
    return Membership(found, role=role)


def refuse_user(conn: Connection, caller: Caller, workspace_id: str, detail: str) -> NoReturn:
    """A user asking for an action only the operator takes: 403 where they may see the workspace, 404 where not."""
    workspace(conn, caller, workspace_id)
    raise Forbidden(detail)


def is_linked(conn: Connection, workspace_id: str, account_id: str) -> bool:
    """True when the account is linked to the workspace; an id that does not parse never is."""
    return looks_like("ba", account_id) and accounts.is_linked(conn, workspace_id, account_id)


def owned_account(conn: Connection, caller: Caller, account_id: str) -> BillingAccount:
    """A billing account the caller owns (the operator sees all)."""
    found = accounts.get(conn, account_id) if looks_like("ba", account_id) else None
    if found is None or not (caller.is_operator or found.owner_user_id == caller.user_id):
        raise NotFound("billing account not found")
    return found


def workspace_account(conn: Connection, caller: Caller, workspace_id: str, account_id: str | None) -> BillingAccount:
    """The workspace's default account, or another account linked to it, for a member (one statement)."""
    if account_id is not None and not looks_like("ba", account_id):
        account_id = ""  # links nothing
    found = accounts.of_workspace(conn, workspace_id, caller.user_id, account_id) \
        if looks_like("ws", workspace_id) else None
    if found is None or not (caller.is_operator or found.role):
        raise NotFound("workspace not found")
    if found.account is None:
        raise NotFound("billing account not linked to this workspace")
    return found.account
