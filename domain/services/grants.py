"""Credit grants: every credit opens one, every debit draws from them in the contract's order (lower priority,
then the earliest expiresAt, none last, then the oldest), and a beat job expires what is left of each once.

credit() and debit() are how every service moves money: the entry and its grants change in one transaction.
"""
import logging
from datetime import datetime

from domain.errors import DomainError, InvalidInput, Unavailable
from domain.grants import Terms
from domain.models import Caller, Entry, Page
from domain.names import EntryKind, Task
from domain.services import access
from domain.services.context import Context
from domain.store import grants, ledger
from domain.store.uow import Connection

log = logging.getLogger(__name__)

EXPIRE_BATCH = 500  # grants one beat run expires at most; the next run takes the rest


def credit(conn: Connection, account_id: str, amount_cents: int, terms: Terms, *, kind: str, key: str,
           **entry) -> ledger.Posting:
    """Post a credit once per key and open its grant with it."""
    posting = ledger.post(conn, account_id, amount_cents, kind=kind, key=key, **entry)
    if posting.created:
        grants.open_for(conn, [(posting.entry, terms)])
    return posting


def open_grants(conn: Connection, credits: list[tuple[Entry, Terms]]) -> None:
    """The grants of credits posted in this transaction (a batch)."""
    grants.open_for(conn, credits)


def debit(conn: Connection, account_id: str, amount_cents: int, *, kind: str, key: str,
          first_key: str | None = None, **entry) -> ledger.Posting:
    """Post a debit (amount_cents < 0) once per key and draw it from the grants (the grant of the credit keyed
    `first_key` first: a refunded payment's own)."""
    posting = ledger.post(conn, account_id, amount_cents, kind=kind, key=key, **entry)
    if posting.created:
        grants.draw(conn, account_id, -amount_cents, posting.entry.id, first_key=first_key)
    return posting


def drawn(conn: Connection, account_id: str, cents: int, last_entry_id: int) -> None:
    """Draw debits posted in this transaction (a usage batch, ending with entry `last_entry_id`)."""
    if cents > 0:
        grants.draw(conn, account_id, cents, last_entry_id)


def draw_each(conn: Connection, debits: list[Entry]) -> None:
    """Draw debit entries posted in this transaction (a batch), each from its account's grants in entry order."""
    grants.draw_many(conn, [(e.billing_account_id, -e.amount_cents, e.id) for e in debits])


class GrantService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def account_page(self, caller: Caller, account_id: str, **query) -> Page:
        with self._ctx.read() as uow:
            access.owned_account(uow.conn, caller, account_id)
            return self._page(uow.conn, account_id, **query)

    def workspace_page(self, caller: Caller, workspace_id: str, account_id: str | None, **query) -> Page:
        with self._ctx.read() as uow:
            account = access.workspace_account(uow.conn, caller, workspace_id, account_id)
            return self._page(uow.conn, account.id, **query)

    def _page(self, conn: Connection, account_id: str, *, limit: int, cursor: str | None = None,
              status: str | None = None) -> Page:
        before = self._ctx.ids.entry_of_cursor(cursor) if cursor else None
        if cursor and before is None:
            raise InvalidInput("the cursor is not one this service issued", field="cursor")
        found = grants.page(conn, account_id, limit=limit + 1, before_entry_id=before, status=status)
        items = found[:limit]
        return Page(items=items, next_cursor=self._ctx.ids.cursor(items[-1].entry_id) if len(found) > limit else None)

    def expire_due(self, limit: int = EXPIRE_BATCH) -> int:
        """Post one `expiry` debit for what each grant past its expiresAt has left (a beat job); how many it
        expired. Exactly once per grant: the entry's key is the grant's, and the grant is closed in the same
        transaction."""
        with self._ctx.uow() as uow:
            due = grants.due(uow.conn, limit=limit)
        expired = 0
        for account_id, grant_id in due:
            try:
                expired += self._expire(account_id, grant_id)
            except Unavailable:
                raise
            except DomainError as exc:  # an invariant broken elsewhere: the audit says so; the others go on
                log.error("grant %s of account %s could not expire: %s", grant_id, account_id, exc.detail)
        return expired

    def _expire(self, account_id: str, grant_id: str) -> bool:
        with self._ctx.uow() as uow:
            ledger.lock_account(uow.conn, account_id)
            cents = grants.remaining_if_due(uow.conn, account_id, grant_id)
            if cents is None:  # spent, or expired by another run meanwhile
                return False
            posting = ledger.post(uow.conn, account_id, -cents, kind=EntryKind.EXPIRY, key=f"expiry:{grant_id}",
                                  description="Expired credit", reference=grant_id)
            grants.close_expired(uow.conn, account_id, grant_id, posting.entry.id, cents)
            uow.after_commit(lambda: self._ctx.enqueue(Task.RECOMPUTE_TIER, account_id=account_id))
            uow.commit()
        return True


def expires_in_future(expires_at: datetime | None, now: datetime) -> None:
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("must be in the future", field="expiresAt")
