"""Workspaces, their members, and the billing accounts bound to them."""
from domain.errors import Conflict, Forbidden, NotFound
from domain.ids import looks_like, new_id
from domain.models import Caller, LinkedAccount, Membership, Workspace
from domain.names import Task
from domain.services import access, rate_limits
from domain.services.context import Context
from domain.store import accounts, users, workspaces


class WorkspaceService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, caller: Caller, name: str, billing_account_id: str | None) -> Workspace:
        """Create a workspace bound to the given account, or to the caller's default one."""
        if caller.is_operator:
            raise Forbidden("workspaces are created with a user's key")
        with self._ctx.uow() as uow:
            if billing_account_id is None:
                account = accounts.user_default(uow.conn, caller.user_id)
                if account is None:
                    raise Conflict("the user has no default billing account yet")
            else:
                account = access.owned_account(uow.conn, caller, billing_account_id)
            workspace = workspaces.insert_workspace(uow.conn, new_id("ws"), name, caller.user_id, account.id)
            accounts.link(uow.conn, workspace.id, account.id)
            workspaces.put_member(uow.conn, workspace.id, caller.user_id, "owner")
            uow.commit()
        return workspace

    def of_caller(self, caller: Caller) -> list[Workspace]:
        if caller.is_operator:
            raise Forbidden("the operator key belongs to no user; read a workspace by its id")
        with self._ctx.uow() as uow:
            return workspaces.of_member(uow.conn, caller.user_id)

    def get(self, caller: Caller, workspace_id: str) -> Workspace:
        with self._ctx.uow() as uow:
            return access.workspace(uow.conn, caller, workspace_id).workspace

    def add_member(self, caller: Caller, workspace_id: str, user_id: str, role: str) -> str:
        with self._ctx.uow() as uow:
            membership = access.workspace(uow.conn, caller, workspace_id, manage=True)
            if not looks_like("usr", user_id) or users.get(uow.conn, user_id) is None:
                raise NotFound("user not found")
            if user_id == membership.workspace.owner_user_id:
                raise Conflict("the owner's role cannot change")
            workspaces.put_member(uow.conn, workspace_id, user_id, role)
            uow.commit()
        return role

    def linked_accounts(self, caller: Caller, workspace_id: str) -> list[LinkedAccount]:
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id)
            return accounts.linked_to(uow.conn, workspace_id)

    def create_and_link(self, caller: Caller, workspace_id: str, name: str) -> LinkedAccount:
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id, manage=True, for_update=True)
            account = accounts.insert_account(uow.conn, new_id("ba"), caller.user_id, name)
            accounts.link(uow.conn, workspace_id, account.id)
            linked = self._linked(uow.conn, workspace_id, account.id)
            uow.commit()
        return linked

    def link(self, caller: Caller, workspace_id: str, billing_account_id: str) -> tuple[LinkedAccount, bool]:
        """Link an account the caller owns; False when it was linked already."""
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id, manage=True, for_update=True)
            access.owned_account(uow.conn, caller, billing_account_id)
            created = accounts.link(uow.conn, workspace_id, billing_account_id)
            linked = self._linked(uow.conn, workspace_id, billing_account_id)
            uow.commit()
        return linked, created

    def set_default(self, caller: Caller, workspace_id: str, billing_account_id: str) -> Workspace:
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id, manage=True, for_update=True)
            if not access.is_linked(uow.conn, workspace_id, billing_account_id):
                access.owned_account(uow.conn, caller, billing_account_id)  # unknown or foreign: 404
                raise Conflict("the billing account is not linked to this workspace; link it first")
            workspace = workspaces.set_default(uow.conn, workspace_id, billing_account_id)
            rate_limits.current(uow.conn, billing_account_id, self._ctx.config.tiers)  # the tier follows at once
            uow.after_commit(lambda: self._ctx.enqueue(Task.RECOMPUTE_TIER, account_id=billing_account_id))
            uow.commit()
        return workspace

    def unlink(self, caller: Caller, workspace_id: str, billing_account_id: str) -> None:
        with self._ctx.uow() as uow:
            membership = access.workspace(uow.conn, caller, workspace_id, manage=True, for_update=True)
            if membership.workspace.default_billing_account_id == billing_account_id:
                raise Conflict("the workspace's default billing account cannot be unlinked; set another default first")
            if not access.is_linked(uow.conn, workspace_id, billing_account_id):
                raise NotFound("billing account not linked to this workspace")
            accounts.unlink(uow.conn, workspace_id, billing_account_id)
            uow.commit()

    @staticmethod
    def _linked(conn, workspace_id: str, account_id: str) -> LinkedAccount:
        return next(item for item in accounts.linked_to(conn, workspace_id) if item.account.id == account_id)

    def membership(self, caller: Caller, workspace_id: str) -> Membership:
        with self._ctx.uow() as uow:
            return access.workspace(uow.conn, caller, workspace_id)
