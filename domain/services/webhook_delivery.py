"""Delivering webhook events: the dispatcher sends one task message per due delivery, each task makes one
attempt, and a beat job emits grant.expiring.

An attempt is claimed in one transaction, the HTTP call made outside any, and its outcome recorded in a
second transaction. Every attempt sends the same body under the same webhook-id (the event's id), signed
afresh with the time of the attempt. A retry due soon rides a countdown message; a later one waits for the
dispatcher, which beat runs every few seconds and which also re-sends what a lost message or a killed
worker left behind.
"""
import json
import logging
from dataclasses import dataclass, replace
from datetime import timedelta

from domain import times, views
from domain.models import Grant
from domain.names import DeliveryStatus, Task, WebhookEventType
from domain.services.context import Context
from domain.store import webhook_events, webhooks
from domain.webhooks import DISABLE_AFTER, retry_delay

log = logging.getLogger(__name__)

DISPATCH_BATCH = 500
RESEND_AFTER_SECONDS = 60.0  # a message not consumed for this long (lost, or its worker killed) is sent again
COUNTDOWN_AT_MOST_SECONDS = 60.0  # a retry due sooner rides a countdown message; a later one the dispatcher's
LEASE_BEYOND_TIMEOUT_SECONDS = 5.0  # an attempt's claim outlives its HTTP timeout by this
EXPIRING_WITHIN = timedelta(days=7)


@dataclass(frozen=True)
class Delivered:
    """What one attempt did."""
    succeeded: bool
    seconds: float
    retry_in: float | None  # a countdown message is due for the next attempt in this many seconds


class WebhookDeliveryService:
    def __init__(self, ctx: Context, sender) -> None:
        self._ctx = ctx
        self._sender = sender
        self._scale = ctx.config.webhook_retry_scale

    def dispatch(self) -> int:
        """Send a message for every due delivery whose message is not out (new ones, retries come due, lost
        messages); how many were sent. Stops at the first send the broker refuses: those go next time."""
        sent = 0
        while True:
            with self._ctx.uow() as uow:
                due = webhooks.claim_due(uow.conn, resend_after=RESEND_AFTER_SECONDS * self._scale,
                                         limit=DISPATCH_BATCH)
                uow.commit()
            for delivery_id in due:
                if not self._ctx.enqueue(Task.DELIVER_WEBHOOK, delivery_id=delivery_id):
                    return sent
                sent += 1
            if len(due) < DISPATCH_BATCH:
                return sent

    def deliver(self, delivery_id: str) -> Delivered | None:
        """One attempt; None when there is none to make (done, not due, in flight elsewhere, endpoint deleted).
        Safe to run twice: the attempt is claimed first."""
        lease = self._ctx.config.webhook_timeout_seconds + LEASE_BEYOND_TIMEOUT_SECONDS
        with self._ctx.uow() as uow:
            target = webhooks.claim_attempt(uow.conn, delivery_id, lease_seconds=lease)
            uow.commit()
        if target is None:
            return None
        attempt = self._sender.send(target.url, msg_id=target.event_id, body=self.body(target), secret=target.secret)
        retry_in = None if attempt.succeeded else retry_delay(target.attempts, self._scale)
        countdown = retry_in is not None and retry_in <= COUNTDOWN_AT_MOST_SECONDS
        with self._ctx.uow() as uow:
            recorded = webhooks.record(uow.conn, delivery_id, ok=attempt.succeeded, status_code=attempt.status_code,
                                       error=attempt.error, retry_in=retry_in, countdown=countdown,
                                       disable_after=DISABLE_AFTER * self._scale)
            uow.commit()
        if recorded.disabled:
            log.warning("webhook endpoint of delivery %s disabled: every attempt failed for %s", delivery_id,
                        DISABLE_AFTER * self._scale)
        again = countdown and recorded.status == DeliveryStatus.PENDING
        return Delivered(attempt.succeeded, attempt.seconds, retry_in if again else None)

    def body(self, target: webhooks.Target) -> bytes:
        """The payload, the same on every attempt: the stored object, and the transaction of an entry's event."""
        data = target.data
        if target.entry is not None:
            entry = replace(target.entry, public_id=self._ctx.ids.transaction(target.entry.id))
            data = views.transaction(entry) if target.type == WebhookEventType.TRANSACTION_CREATED else (
                data | {"transactionId": entry.public_id})
        return json.dumps({"id": target.event_id, "type": target.type, "createdAt": times.rfc3339(target.created_at),
                           "workspaceId": target.workspace_id, "data": data}, separators=(",", ":")).encode()

    def notice_expiring_grants(self) -> int:
        """Emit grant.expiring, once per grant, for active grants expiring within 7 days, to each workspace whose
        default account holds one; how many grants."""
        with self._ctx.uow() as uow:
            due = webhooks.notice_expiring(uow.conn, within=EXPIRING_WITHIN, limit=DISPATCH_BATCH)
            for row, workspace_ids in due:
                data = views.grant(_grant(row))
                for workspace_id in workspace_ids:
                    webhook_events.emit(uow.conn, workspace_id=workspace_id, type=WebhookEventType.GRANT_EXPIRING,
                                        data=data)
            uow.commit()
        return len(due)


def _grant(row) -> Grant:
    return Grant(**{name: row[name] for name in Grant.__dataclass_fields__})
