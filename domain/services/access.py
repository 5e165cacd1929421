"""Who may see and manage what. Unknown and foreign look the same: NotFound."""
from typing import NoReturn

from domain.errors import Forbidden, NotFound, Unauthenticated
from domain.ids import looks_like
from domain.models import BillingAccount, Caller, KeyHolder, Membership
from domain.store import accounts, prepared, workspaces
from domain.store.uow import Connection, driver_of


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
    return workspace_read(driver_of(conn), caller, workspace_id, account_id).account


def workspace_read(driver, caller: Caller | KeyHolder, workspace_id: str, account_id: str | None, *,
                   with_balance: bool = False) -> prepared.WorkspaceRead:
    """The same on a bare psycopg connection (domain.store.prepared), checking a KeyHolder's key in the same
    statement: Unauthenticated when no live key has it; with_balance, the account's holds and grants too."""
    if account_id is not None and not looks_like("ba", account_id):
        account_id = ""  # links nothing
    if not looks_like("ws", workspace_id):
        workspace_id = ""  # names nothing, but a KeyHolder's key is still checked
    if isinstance(caller, KeyHolder):
        found = prepared.workspace_account(driver, workspace_id, account_id, key_hash=caller.key_hash,
                                           with_balance=with_balance)
        if found is None:
            raise Unauthenticated("the key is unknown or revoked")
    else:
        found = prepared.workspace_account(driver, workspace_id, account_id, user_id=caller.user_id,
                                           with_balance=with_balance)
    if not found.workspace_found or not (found.user_id is None or found.role):
        raise NotFound("workspace not found")
    if found.account is None:
        raise NotFound("billing account not linked to this workspace")
    return found
