"""Balances, summaries and transaction pages, per account and per workspace."""
import dataclasses
from datetime import UTC, datetime

from domain.errors import Forbidden, InvalidInput, NotFound
from domain.ids import looks_like
from domain.models import Balance, BillingAccount, Caller, Page, Summary
from domain.services import access
from domain.services.context import Context
from domain.store import accounts, balances, ledger
from domain.store.uow import Connection

class ReadService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def owned_accounts(self, caller: Caller) -> list[BillingAccount]:
        if caller.is_operator:
            raise Forbidden("the operator key owns no billing accounts")
        with self._ctx.uow() as uow:
            return accounts.owned_by(uow.conn, caller.user_id)

    def account(self, caller: Caller, account_id: str) -> tuple[BillingAccount, list[str]]:
        with self._ctx.uow() as uow:
            account = access.owned_account(uow.conn, caller, account_id)
            return account, accounts.linked_workspace_ids(uow.conn, account_id)

    def balance(self, caller: Caller, account_id: str, as_of: datetime | None = None) -> Balance:
        """The balance now (one statement), or as of an instant (the balance chain, read by an index)."""
        with self._ctx.read() as uow:
            if as_of is not None:
                return _balance_as_of(uow.conn, access.owned_account(uow.conn, caller, account_id), as_of)
            found = balances.of_account(uow.conn, account_id) if looks_like("ba", account_id) else None
        if found is None or not (caller.is_operator or found.account.owner_user_id == caller.user_id):
            raise NotFound("billing account not found")
        return _balance(found)

    def summary(self, caller: Caller, account_id: str, since: datetime | None, until: datetime | None) -> Summary:
        with self._ctx.uow() as uow:
            account = access.owned_account(uow.conn, caller, account_id)
            return _summary(uow.conn, account, since, until)

    def transactions(self, caller: Caller, account_id: str, **query) -> Page:
        with self._ctx.read() as uow:
            access.owned_account(uow.conn, caller, account_id)
            return self._page(uow.conn, account_id, **query)

    def workspace_balance(self, caller: Caller, workspace_id: str, as_of: datetime | None = None) -> Balance:
        """The balance of the workspace's default account now (one statement), or as of an instant."""
        with self._ctx.read() as uow:
            if as_of is not None:
                account = self._workspace_account(uow.conn, caller, workspace_id, None)
                return _balance_as_of(uow.conn, account, as_of)
            found = balances.of_workspace(uow.conn, workspace_id, caller.user_id, None) \
                if looks_like("ws", workspace_id) else None
        if found is None or not (caller.is_operator or found.role):
            raise NotFound("workspace not found")
        if found.current is None:
            raise NotFound("billing account not linked to this workspace")
        return _balance(found.current)

    def workspace_summary(self, caller: Caller, workspace_id: str, since: datetime | None,
                          until: datetime | None) -> Summary:
        with self._ctx.uow() as uow:
            account = self._workspace_account(uow.conn, caller, workspace_id, None)
            return _summary(uow.conn, account, since, until)

    def workspace_transactions(self, caller: Caller, workspace_id: str, account_id: str | None,
                               **query) -> Page:
        with self._ctx.read() as uow:
            account = self._workspace_account(uow.conn, caller, workspace_id, account_id)
            return self._page(uow.conn, account.id, **query)

    def _page(self, conn: Connection, account_id: str, *, limit: int, cursor: str | None = None,
              kind: str | None = None, since: datetime | None = None, until: datetime | None = None) -> Page:
        """Newest first; entries and the cursor carry public ids (domain.public_ids), never the numbers."""
        ids = self._ctx.ids
        before_id = ids.entry_of_cursor(cursor) if cursor else None
        if cursor and before_id is None:
            raise InvalidInput("the cursor is not one this service issued", field="cursor")
        found = ledger.page(conn, account_id, limit=limit + 1, before_id=before_id, kind=kind,
                            since=since, until=until)
        entries = [dataclasses.replace(e, public_id=ids.transaction(e.id)) for e in found[:limit]]
        return Page(items=entries, next_cursor=ids.cursor(entries[-1].id) if len(found) > limit else None)

    @staticmethod
    def _workspace_account(conn: Connection, caller: Caller, workspace_id: str,
                           account_id: str | None) -> BillingAccount:
        return access.workspace_account(conn, caller, workspace_id, account_id)


def _balance(current: balances.Current) -> Balance:
    account = current.account
    return _with_grants(account, account.balance_cents, current.held_cents, current.grants, datetime.now(UTC))


def _balance_as_of(conn: Connection, account: BillingAccount, instant: datetime) -> Balance:
    """Right after the last entry at or before `instant`; an instant still to come reads as now."""
    instant = min(instant, datetime.now(UTC))
    if instant < account.created_at:
        raise NotFound("the billing account did not exist at that instant")
    balance, grants = balances.as_of(conn, account.id, instant)
    return _with_grants(account, balance, balances.held_as_of(conn, account.id, instant), grants, instant)


def _with_grants(account: BillingAccount, balance: int, held: int, grants: balances.Grants,
                 instant: datetime) -> Balance:
    return Balance(billing_account_id=account.id, currency=account.currency, balance_cents=balance, as_of=instant,
                   available_cents=balance - held, paid_cents=grants.paid_cents,
                   promotional_cents=grants.promotional_cents, next_expiry_cents=grants.next_expiry_cents,
                   next_expiry_at=grants.next_expiry_at)


def _summary(conn: Connection, account: BillingAccount, since: datetime | None,
             until: datetime | None) -> Summary:
    totals = ledger.window_totals(conn, account.id, since=since, until=until)
    return Summary(billing_account_id=account.id, currency=account.currency,
                   balance_cents=account.balance_cents, total_credited_cents=totals.credited_cents,
                   total_debited_cents=totals.debited_cents, transaction_count=totals.count,
                   last_transaction_at=totals.last_at, by_kind=totals.by_kind)
