"""x402 SQL over the shared checkouts and operations tables: claims, leases, what is due."""
from datetime import timedelta

from sqlalchemy import Connection, func, select, update

from domain.models import Checkout, Operation
from domain.names import CheckoutStatus, OperationStatus
from domain.store import checkouts as checkout_store, operations as operation_store
from domain.store.tables import checkouts, operations

_c, _o = checkouts.c, operations.c


def _unclaimed(stale_after: timedelta):
    """A payment nobody holds: refused (or left unanswered) before it was accepted, or a claim whose
    request died while verifying."""
    return _c.operation_id.is_(None) & ((_c.status == CheckoutStatus.FAILED) | (
        (_c.status == CheckoutStatus.PENDING) & (_c.updated_at < func.now() - stale_after)))


def reopen(conn: Connection, checkout_id: str, *, details: dict, stale_after: timedelta) -> Checkout | None:
    """Claim an unaccepted payment again for a new attempt; None when someone else holds it or it was accepted."""
    found = conn.execute(update(checkouts).where((_c.id == checkout_id) & _unclaimed(stale_after))
                         .values(status=CheckoutStatus.PENDING, failure_reason=None, details=details, updated_at=func.now())
                         .returning(_c.id)).scalar()
    return checkout_store.get(conn, found) if found else None


def expire_claim(conn: Connection, checkout_id: str, *, stale_after: timedelta, reason: str) -> bool:
    """Expire a claim that never became an accepted payment."""
    done = conn.execute(update(checkouts).where(
        (_c.id == checkout_id) & (_c.status == CheckoutStatus.PENDING) & _unclaimed(stale_after))
        .values(status=CheckoutStatus.EXPIRED, failure_reason=reason, updated_at=func.now()).returning(_c.id)).scalar()
    return done is not None


def attach_operation(conn: Connection, checkout_id: str, operation_id: str) -> Checkout | None:
    """Mark a claimed payment accepted by binding its settling operation; None if the claim was lost."""
    found = conn.execute(update(checkouts).where(
        (_c.id == checkout_id) & (_c.status == CheckoutStatus.PENDING) & _c.operation_id.is_(None))
        .values(operation_id=operation_id, updated_at=func.now()).returning(_c.id)).scalar()
    return checkout_store.get(conn, found) if found else None


def claim_operation(conn: Connection, operation_id: str, *, lease: timedelta) -> Operation | None:
    """Take the operation for one settle attempt: queued, or running with a lease older than `lease`."""
    found = conn.execute(update(operations).where(
        (_o.id == operation_id) & ((_o.status == OperationStatus.QUEUED) | (
            (_o.status == OperationStatus.RUNNING) & (_o.updated_at < func.now() - lease))))
        .values(status=OperationStatus.RUNNING, attempts=_o.attempts + 1, updated_at=func.now()).returning(_o.id)).scalar()
    return operation_store.get(conn, found) if found else None


def due(conn: Connection, *, older_than: timedelta, limit: int) -> list[Checkout]:
    """Pending x402 checkouts untouched for older_than, oldest first."""
    ids = list(conn.execute(select(_c.id).where(_c.provider == "x402", _c.status == CheckoutStatus.PENDING,
                                           _c.updated_at < func.now() - older_than)
                       .order_by(_c.updated_at).limit(limit)).scalars())
    return [checkout_store.get(conn, checkout_id) for checkout_id in ids]
