"""Who may see and manage what. Unknown and foreign look the same: NotFound."""
from collections.abc import Callable
from typing import NoReturn, TypeVar

from domain.errors import Forbidden, NotFound, Unauthenticated
from domain.ids import looks_like
from domain.models import BillingAccount, Caller, KeyHolder, Membership
from domain.services.context import Context
from domain.store import accounts, prepared, workspaces
from domain.store.uow import Connection, driver_of

T = TypeVar("T")


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
    return checked(prepared.workspace_account(driver, named(workspace_id), account_id, with_balance=with_balance,
                                              **who(caller)))


def named(workspace_id: str) -> str:
    """The workspace id as a prepared statement looks it up: "" (no workspace) for one that does not parse,
    as the caller's key is still checked."""
    return workspace_id if looks_like("ws", workspace_id) else ""


def who(caller: Caller | KeyHolder) -> dict:
    """How a prepared statement knows the caller: key_hash= (a KeyHolder), or user_id= (None: the operator)."""
    return {"key_hash": caller.key_hash} if isinstance(caller, KeyHolder) else {"user_id": caller.user_id}


def checked(found: prepared.WorkspaceRead | None) -> prepared.WorkspaceRead:
    """A caller's read of a workspace (domain.store.prepared), refused unless the caller may read it."""
    if found is None:
        raise Unauthenticated("the key is unknown or revoked")
    if not found.workspace_found or not (found.user_id is None or found.role):
        raise NotFound("workspace not found")
    if found.account is None:
        raise NotFound("billing account not linked to this workspace")
    return found


def lagging_read(ctx: Context, caller: Caller | KeyHolder, read: Callable[..., T]) -> T:
    """read(driver, caller) on a bare psycopg connection, for an answer that may lag (Context.lagging). Without
    replicas: on raw_read, one round trip where the read's statement checks a KeyHolder's key. With them, a
    KeyHolder's key is checked on the primary first (a replica may not have seen a revocation), and the read
    runs where Context.lagging puts it."""
    if not ctx.routes_reads:
        with ctx.raw_read() as driver:
            return read(driver, caller)
    if isinstance(caller, KeyHolder):
        with ctx.raw_read() as driver:
            user_id = prepared.user_of_key(driver, caller.key_hash)
        if user_id is None:
            raise Unauthenticated("the key is unknown or revoked")
        caller = Caller(user_id=user_id)
    return ctx.lagging(lambda conn: read(driver_of(conn), caller))
