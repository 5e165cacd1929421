"""Balances, summaries and transaction pages, per account and per workspace.

Summaries and pages may lag the primary (Context.lagging: a read replica when configured); balances never do."""
import dataclasses
from datetime import UTC, datetime

from domain.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from domain.ids import looks_like
from domain.models import Balance, BillingAccount, Caller, KeyHolder, Page, Summary
from domain.services import access
from domain.services.context import Context
from domain.store import accounts, ledger, prepared
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

    def balance(self, caller: Caller, account_id: str) -> Balance:
        with self._ctx.read() as uow:
            return _balance(access.owned_account(uow.conn, caller, account_id))

    def summary(self, caller: Caller, account_id: str, since: datetime | None, until: datetime | None) -> Summary:
        return self._ctx.lagging(lambda conn: _summary(conn, access.owned_account(conn, caller, account_id),
                                                       since, until))

    def transactions(self, caller: Caller, account_id: str, **query) -> Page:
        def read(conn: Connection) -> Page:
            access.owned_account(conn, caller, account_id)
            return self._page(conn, account_id, **query)
        return self._ctx.lagging(read)

    def workspace_balance(self, caller: Caller | KeyHolder, workspace_id: str) -> Balance:
        with self._ctx.raw_read() as conn:
            return _balance(_workspace_account(conn, caller, workspace_id, None))

    def workspace_summary(self, caller: Caller, workspace_id: str, since: datetime | None,
                          until: datetime | None) -> Summary:
        return self._ctx.lagging(lambda conn: _summary(
            conn, _workspace_account(driver_of(conn), caller, workspace_id, None), since, until))

    def workspace_transactions(self, caller: Caller | KeyHolder, workspace_id: str, account_id: str | None,
                               **query) -> Page:
        before_id, limit = self._before(query.pop("cursor", None)), query.pop("limit")

        def read(conn) -> list:  # a psycopg connection
            account = _workspace_account(conn, caller, workspace_id, account_id)
            return prepared.page(conn, account.id, limit=limit + 1, before_id=before_id, **query)
        if self._ctx.routes_reads:
            if isinstance(caller, KeyHolder):  # checked on the primary: a replica may not have seen a revocation
                caller = self._caller(caller)
            return self._page_of(self._ctx.lagging(lambda conn: read(driver_of(conn))), limit)
        with self._ctx.raw_read() as conn:  # no replica: one round trip, the key checked by the same statement
            return self._page_of(read(conn), limit)

    def _caller(self, holder: KeyHolder) -> Caller:
        with self._ctx.raw_read() as conn:
            user_id = prepared.user_of_key(conn, holder.key_hash)
        if user_id is None:
            raise Unauthenticated("the key is unknown or revoked")
        return Caller(user_id=user_id)

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


def _workspace_account(conn, caller: Caller | KeyHolder, workspace_id: str, account_id: str | None) -> BillingAccount:
    """The workspace's default account, or another account linked to it: one prepared statement, which also
    checks a KeyHolder's key."""
    if account_id is not None and not looks_like("ba", account_id):
        account_id = ""  # links nothing
    if not looks_like("ws", workspace_id):
        workspace_id = ""  # names nothing, but a KeyHolder's key is still checked
    if isinstance(caller, KeyHolder):
        found = prepared.workspace_account(conn, workspace_id, account_id, key_hash=caller.key_hash)
        if found is None:
            raise Unauthenticated("the key is unknown or revoked")
    else:
        found = prepared.workspace_account(conn, workspace_id, account_id, user_id=caller.user_id)
    if not found.workspace_found or not (found.user_id is None or found.role):
        raise NotFound("workspace not found")
    if found.account is None:
        raise NotFound("billing account not linked to this workspace")
    return found.account


def _balance(account: BillingAccount) -> Balance:
    return Balance(billing_account_id=account.id, currency=account.currency,
                   balance_cents=account.balance_cents, as_of=datetime.now(UTC))


def _summary(conn: Connection, account: BillingAccount, since: datetime | None,
             until: datetime | None) -> Summary:
    totals = ledger.window_totals(conn, account.id, since=since, until=until)
    return Summary(billing_account_id=account.id, currency=account.currency,
                   balance_cents=account.balance_cents, total_credited_cents=totals.credited_cents,
                   total_debited_cents=totals.debited_cents, transaction_count=totals.count,
                   last_transaction_at=totals.last_at, by_kind=totals.by_kind)
