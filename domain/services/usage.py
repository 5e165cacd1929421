"""Usage: batches of metered events debited once per eventId, and the usage overview of a workspace."""
import dataclasses
from datetime import UTC, datetime, timedelta

from domain import times, usage
from domain.errors import InvalidInput
from domain.ids import new_id
from domain.models import Caller, KeyHolder, MetricUsage, Operation, UsageOverview, UsagePeriod
from domain.names import Task
from domain.public_ids import PublicIds
from domain.services import access, grants
from domain.services.context import Context
from domain.store import operations, spend, usage as store
from domain.store.uow import Connection

FUTURE_TOLERANCE = timedelta(minutes=5)
DEFAULT_WINDOW = timedelta(days=30)
MAX_WINDOW = {"hour": timedelta(days=31), "day": timedelta(days=400)}


class UsageService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def request(self, caller: Caller, workspace_id: str, events: list[usage.Event],
                idempotency_scope: str | None) -> Operation:
        """Record a batch for the workspace's current default account (once per scope); the worker debits it."""
        if not caller.is_operator:
            with self._ctx.uow() as uow:
                access.refuse_user(uow.conn, caller, workspace_id, "only the operator records usage")
        now = datetime.now(UTC)
        events = [dataclasses.replace(e, occurred_at=e.occurred_at or now) for e in events]
        for i, event in enumerate(events):
            if event.occurred_at > now + FUTURE_TOLERANCE:
                raise InvalidInput("must not be more than 5 minutes in the future", field=f"events[{i}].occurredAt")
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id).workspace
            op, created = operations.insert_operation(
                uow.conn, operation_id=new_id("op"), kind="usage", caller=caller.name,
                idempotency_scope=idempotency_scope, workspace_id=workspace.id,
                billing_account_id=workspace.default_billing_account_id,
                payload={"events": [_event_json(e) for e in events]}, trace_parent=self._ctx.trace_parent())
            if created:
                uow.after_commit(lambda: self._ctx.enqueue(Task.APPLY_OPERATION, operation_id=op.id))
            uow.commit()
        return op

    def overview(self, caller: Caller | KeyHolder, workspace_id: str, since: datetime | None, until: datetime | None,
                 granularity: str) -> UsageOverview:
        until = until or (times.shifted(since, DEFAULT_WINDOW) if since else datetime.now(UTC))
        since = since or times.shifted(until, -DEFAULT_WINDOW)
        if until - since > MAX_WINDOW[granularity]:
            raise InvalidInput(f"a window of granularity {granularity} spans at most "
                               f"{MAX_WINDOW[granularity].days} days", field="from")
        def read(driver, caller: Caller | KeyHolder):
            found, series, metrics = store.overview(driver, access.named(workspace_id), since, until, granularity,
                                                    **access.who(caller))
            return access.checked(found).account, series, metrics
        account, series, metrics = access.lagging_read(self._ctx, caller, read)  # may lag: a replica, when configured
        return UsageOverview(workspace_id=workspace_id, billing_account_id=account.id, since=since, until=until,
                             granularity=granularity, series=[UsagePeriod(*row) for row in series],
                             by_metric=[MetricUsage(*row) for row in metrics])


def apply_batch(conn: Connection, op: Operation, public_ids: PublicIds) -> dict:
    """Debit one batch in the caller's transaction: every eventId at most once, never below zero."""
    events = [_event(e) for e in op.payload["events"]]
    balance, held = store.lock_for_batch(conn, op.workspace_id, op.billing_account_id)
    room = spend.standing(conn, op.workspace_id).room()
    found = store.prior(conn, op.workspace_id, op.billing_account_id,
                        [store.key(op.workspace_id, e.event_id) for e in events])
    prior_ids = {k.split(":", 2)[2]: entry_id for k, (entry_id, *_rest) in found.items()}
    outcomes = usage.plan(balance, events, {k.split(":", 2)[2]: tuple(v[1:]) for k, v in found.items()},
                          held_cents=held, room_cents=room)
    debits = [o for o in outcomes if o.status == usage.DEBITED]
    ids, balance = store.insert(conn, op.billing_account_id, op.workspace_id, [
        _row(op.workspace_id, o) for o in debits]) if debits else ({}, balance)
    spent = sum(o.event.amount_cents for o in debits)
    grants.drawn(conn, op.billing_account_id, spent, max(ids.values(), default=0))
    spend.add(conn, op.workspace_id, spent)
    entry_of = prior_ids | {o.event.event_id: ids[store.key(op.workspace_id, o.event.event_id)] for o in debits}
    return {"billingAccountId": op.billing_account_id, "workspaceId": op.workspace_id,
            "debited": len(debits), "debitedCents": sum(o.event.amount_cents for o in debits),
            "duplicates": sum(o.status == usage.DUPLICATE for o in outcomes),
            "refused": sum(o.status == usage.REFUSED for o in outcomes), "balanceAfterCents": balance,
            "events": [_outcome_json(o, entry_of.get(o.event.event_id), public_ids) for o in outcomes]}


def _row(workspace_id: str, outcome: usage.Outcome) -> dict:
    e = outcome.event
    return {"key": store.key(workspace_id, e.event_id), "event_id": e.event_id, "metric": e.metric,
            "quantity": e.quantity, "amount": e.amount_cents, "balance_after": outcome.balance_after_cents,
            "occurred_at": e.occurred_at, "description": f"Usage: {e.quantity} {e.metric}"}


def _outcome_json(outcome: usage.Outcome, entry_id: int | None, ids: PublicIds) -> dict:
    body = {"eventId": outcome.event.event_id, "status": outcome.status,
            "transactionId": ids.transaction(entry_id) if entry_id and outcome.status != usage.REFUSED else None}
    return body | ({"reason": outcome.reason} if outcome.reason else {})


def _event_json(e: usage.Event) -> dict:
    return {"eventId": e.event_id, "metric": e.metric, "quantity": e.quantity, "amountCents": e.amount_cents,
            "occurredAt": e.occurred_at.astimezone(UTC).isoformat()}


def _event(data: dict) -> usage.Event:
    return usage.Event(event_id=data["eventId"], metric=data["metric"], quantity=data["quantity"],
                       amount_cents=data["amountCents"], occurred_at=datetime.fromisoformat(data["occurredAt"]))
