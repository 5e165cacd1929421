"""Balances, summaries and transaction pages, per account and per workspace.

Summaries and pages may lag the primary (Context.lagging: a read replica when configured); balances never do."""
import dataclasses
from datetime import UTC, datetime

from domain.errors import Forbidden, InvalidInput, NotFound
from domain.ids import looks_like
from domain.models import Balance, BillingAccount, Caller, KeyHolder, Page, Summary
from domain.services import access
from domain.services.context import Context
from domain.store import accounts, balances, ledger, prepared
from domain.store.uow import Connection, driver_of

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
        return self._ctx.lagging(lambda conn: _summary(conn, access.owned_account(conn, caller, account_id),
                                                       since, until))

    def transactions(self, caller: Caller, account_id: str, **query) -> Page:
        def read(conn: Connection) -> Page:
            access.owned_account(conn, caller, account_id)
            return self._page(conn, account_id, **query)
        return self._ctx.lagging(read)

    def workspace_balance(self, caller: Caller | KeyHolder, workspace_id: str,
                          as_of: datetime | None = None) -> Balance:
        """The balance of the workspace's default account now (one prepared statement, which also checks a
        KeyHolder's key), or as of an instant."""
        if as_of is not None:
            with self._ctx.read() as uow:
                account = access.workspace_account(uow.conn, caller, workspace_id, None)
                return _balance_as_of(uow.conn, account, as_of)
        with self._ctx.raw_read() as conn:
            return _balance(access.workspace_read(conn, caller, workspace_id, None, with_balance=True).current)

    def workspace_summary(self, caller: Caller, workspace_id: str, since: datetime | None,
                          until: datetime | None) -> Summary:
        return self._ctx.lagging(lambda conn: _summary(
            conn, access.workspace_read(driver_of(conn), caller, workspace_id, None).account, since, until))

    def workspace_transactions(self, caller: Caller | KeyHolder, workspace_id: str, account_id: str | None,
                               **query) -> Page:
        before_id, limit = self._before(query.pop("cursor", None)), query.pop("limit")

        def read(driver, caller: Caller | KeyHolder) -> list[tuple]:
            account = access.workspace_read(driver, caller, workspace_id, account_id).account
            return prepared.page(driver, account.id, limit=limit + 1, before_id=before_id, **query)
        return self._rows_page(access.lagging_read(self._ctx, caller, read), limit)

    def _page(self, conn: Connection, account_id: str, *, limit: int, cursor: str | None = None,
              kind: str | None = None, since: datetime | None = None, until: datetime | None = None) -> Page:
        found = ledger.page(conn, account_id, limit=limit + 1, before_id=self._before(cursor), kind=kind,
                            since=since, until=until)
        return self._page_of(found, limit)

    def _before(self, cursor: str | None) -> int | None:
        before_id = self._ctx.ids.entry_of_cursor(cursor) if cursor else None
        if cursor and before_id is None:
            raise InvalidInput("the cursor is not one this service issued", field="cursor")
        return before_id

    def _page_of(self, found: list, limit: int) -> Page:
        """Newest first; entries and the cursor carry public ids (domain.public_ids), never the numbers."""
        ids = self._ctx.ids
        entries = [dataclasses.replace(e, public_id=ids.transaction(e.id)) for e in found[:limit]]
        return Page(items=entries, next_cursor=ids.cursor(entries[-1].id) if len(found) > limit else None)

    def _rows_page(self, rows: list[tuple], limit: int) -> Page:
        """The same from prepared.page's rows, no Entry built: each item the row and its public id (Entry's
        fields in order, domain.views.transaction_row)."""
        transaction = self._ctx.ids.transaction
        items = [(*row, transaction(row[0])) for row in rows[:limit]]
        return Page(items=items, next_cursor=self._ctx.ids.cursor(items[-1][0]) if len(rows) > limit else None)



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
