"""Webhook SQL: endpoints, deliveries (dispatched, claimed per attempt, recorded), grants about to expire.

A delivery is sent by one task message per attempt. The dispatcher marks a due delivery enqueued before it
sends the message; the attempt itself is claimed in a transaction of its own (attempt_until: no other
message for it runs the attempt meanwhile, and a killed worker's claim ends by itself), and its outcome is
recorded in another, after the HTTP call.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from domain.models import Entry, WebhookDelivery, WebhookEndpoint
from domain.names import DeliveryStatus

_ENDPOINT = "id, workspace_id, url, events, description, enabled, created_at"
_DELIVERY = ("d.id, d.endpoint_id, d.event_id, e.type, d.status, d.attempts, d.last_status_code, d.last_error, "
             "d.next_attempt_at, d.created_at")


def _endpoint(row, secret: str | None = None) -> WebhookEndpoint:
    return WebhookEndpoint(row.id, row.workspace_id, row.url, list(row.events), row.description, row.enabled,
                           row.created_at, secret)


def _delivery(row) -> WebhookDelivery:
    return WebhookDelivery(row.id, row.endpoint_id, row.event_id, row.type, row.status, row.attempts,
                           row.last_status_code, row.last_error, row.next_attempt_at, row.created_at)


_CREATE = text(f"""
INSERT INTO webhook_endpoints (id, workspace_id, url, events, description, secret, created_by)
VALUES (:id, :workspace_id, :url, :events, :description, :secret, :created_by)
RETURNING {_ENDPOINT}
""")


def create(conn: Connection, *, endpoint_id: str, workspace_id: str, url: str, events: list[str],
           description: str | None, secret: str, created_by: str) -> WebhookEndpoint:
    row = conn.execute(_CREATE, {"id": endpoint_id, "workspace_id": workspace_id, "url": url, "events": events,
                                 "description": description, "secret": secret, "created_by": created_by}).one()
    return _endpoint(row, secret)


_GET = text(f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = :id AND workspace_id = :workspace_id "
            "AND deleted_at IS NULL")


def get(conn: Connection, workspace_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    row = conn.execute(_GET, {"id": endpoint_id, "workspace_id": workspace_id}).first()
    return _endpoint(row) if row else None


_OF_WORKSPACE = text(f"""
SELECT {_ENDPOINT} FROM webhook_endpoints
WHERE workspace_id = :workspace_id AND deleted_at IS NULL
  AND (CAST(:before_at AS timestamptz) IS NULL OR (created_at, id) < (:before_at, :before_id))
ORDER BY created_at DESC, id DESC LIMIT :limit
""")


def of_workspace(conn: Connection, workspace_id: str, *, limit: int,
                 before: tuple[datetime, str] | None = None) -> list[WebhookEndpoint]:
    """Newest first; `before` is the (created_at, id) of the last endpoint of the previous page."""
    at, row_id = before or (None, None)
    rows = conn.execute(_OF_WORKSPACE, {"workspace_id": workspace_id, "limit": limit, "before_at": at,
                                        "before_id": row_id})
    return [_endpoint(row) for row in rows]


# Deleted: no new event reaches it, and its pending deliveries end failed.
_DELETE = text("""
WITH gone AS (
    UPDATE webhook_endpoints SET deleted_at = now(), enabled = false
    WHERE id = :id AND workspace_id = :workspace_id AND deleted_at IS NULL RETURNING id
), ended AS (
    UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = now(),
           last_error = COALESCE(last_error || '; ', '') || 'the endpoint was deleted'
    WHERE endpoint_id IN (SELECT id FROM gone) AND status = 'pending'
)
SELECT count(*) FROM gone
""")


def delete(conn: Connection, workspace_id: str, endpoint_id: str) -> bool:
    return conn.execute(_DELETE, {"id": endpoint_id, "workspace_id": workspace_id}).scalar() == 1


_DELIVERIES = text(f"""
SELECT {_DELIVERY} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
WHERE d.endpoint_id = :endpoint_id
  AND (CAST(:before_at AS timestamptz) IS NULL OR (d.created_at, d.id) < (:before_at, :before_id))
ORDER BY d.created_at DESC, d.id DESC LIMIT :limit
""")


def deliveries(conn: Connection, endpoint_id: str, *, limit: int,
               before: tuple[datetime, str] | None = None) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first."""
    at, row_id = before or (None, None)
    rows = conn.execute(_DELIVERIES, {"endpoint_id": endpoint_id, "limit": limit, "before_at": at,
                                      "before_id": row_id})
    return [_delivery(row) for row in rows]


# A manual retry: pending and due now, also after it succeeded or failed for good; its message is sent after
# the commit (enqueued now). An attempt still in flight keeps its claim.
_RETRY = text(f"""
WITH retried AS (
    UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), enqueued_at = now(),
           updated_at = now()
    WHERE id = :id AND endpoint_id = :endpoint_id RETURNING *
)
SELECT {_DELIVERY} FROM retried d JOIN webhook_events e ON e.id = d.event_id
""")


def retry(conn: Connection, endpoint_id: str, delivery_id: str) -> WebhookDelivery | None:
    row = conn.execute(_RETRY, {"id": delivery_id, "endpoint_id": endpoint_id}).first()
    return _delivery(row) if row else None


# Due deliveries of enabled endpoints whose message was not sent within resend_after (a lost message, a retry
# come due) and whose attempt is not in flight, oldest due first.
_CLAIM_DUE = text("""
UPDATE webhook_deliveries SET enqueued_at = now()
WHERE id IN (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.enqueued_at IS NULL OR d.enqueued_at < now() - make_interval(secs => :resend_after))
      AND (d.attempt_until IS NULL OR d.attempt_until < now())
    ORDER BY d.next_attempt_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING id
""")


def claim_due(conn: Connection, *, resend_after: float, limit: int) -> list[str]:
    """Mark due deliveries enqueued; their ids, for one message each."""
    return list(conn.execute(_CLAIM_DUE, {"resend_after": resend_after, "limit": limit}).scalars())


@dataclass(frozen=True)
class Target:
    """What an attempt sends, and where."""
    delivery_id: str
    attempts: int  # with this one
    url: str
    secret: str
    event_id: str
    type: str
    workspace_id: str
    data: dict
    created_at: datetime
    entry: Entry | None  # the ledger entry the payload shows, for the events made from one


# One attempt claimed: counted now, so a worker killed mid-attempt has it counted too. Not for a deleted
# endpoint; a disabled one's pending delivery is one retried by hand.
_CLAIM_ATTEMPT = text("""
WITH claimed AS (
    UPDATE webhook_deliveries d SET attempts = d.attempts + 1, updated_at = now(),
           attempt_until = now() + make_interval(secs => :lease)
    FROM webhook_endpoints p
    WHERE d.id = :id AND p.id = d.endpoint_id AND p.deleted_at IS NULL AND d.status = 'pending'
      AND d.next_attempt_at <= now() AND (d.attempt_until IS NULL OR d.attempt_until < now())
    RETURNING d.id, d.attempts, d.event_id, p.url, p.secret
)
SELECT c.id, c.attempts, c.url, c.secret, e.id AS event_id, e.type, e.workspace_id, e.data, e.created_at,
       l.id AS entry_id, l.billing_account_id, l.workspace_id AS entry_workspace_id, l.kind, l.amount_cents,
       l.balance_after_cents, l.description, l.reference, l.created_at AS entry_created_at
FROM claimed c JOIN webhook_events e ON e.id = c.event_id
LEFT JOIN ledger_entries l ON l.billing_account_id = e.billing_account_id AND l.id = e.entry_id
""")


def claim_attempt(conn: Connection, delivery_id: str, *, lease_seconds: float) -> Target | None:
    """Claim the delivery's next attempt; None when it is not pending, not due, in flight elsewhere or its
    endpoint was deleted."""
    row = conn.execute(_CLAIM_ATTEMPT, {"id": delivery_id, "lease": lease_seconds}).first()
    if row is None:
        return None
    entry = None if row.entry_id is None else Entry(
        row.entry_id, row.billing_account_id, row.entry_workspace_id, row.kind, row.amount_cents,
        row.balance_after_cents, row.description, row.reference, row.entry_created_at)
    return Target(row.id, row.attempts, row.url, row.secret, row.event_id, row.type, row.workspace_id, row.data,
                  row.created_at, entry)


# The outcome of an attempt. A failure with a retry left is pending again (next_attempt_at), else failed. The
# endpoint's failing streak starts at its first failure after a success; a failure once it spans
# disable_after disables the endpoint. A success ends the streak, and enables an endpoint that was disabled
# (a delivery retried by hand got through).
_RECORD = text("""
WITH outcome AS (  -- no retry for an endpoint deleted or disabled meanwhile (or disabled already: a retry by hand)
    SELECT CASE WHEN :status = 'pending' AND NOT EXISTS (
                    SELECT 1 FROM webhook_endpoints p JOIN webhook_deliveries d ON d.endpoint_id = p.id
                    WHERE d.id = :id AND p.deleted_at IS NULL AND p.enabled) THEN 'failed'
                ELSE :status END AS status
), recorded AS (
    UPDATE webhook_deliveries SET status = o.status, last_status_code = :code, last_error = :error,
           attempt_until = NULL, updated_at = now(),
           next_attempt_at = CASE WHEN o.status = 'pending' THEN now() + make_interval(secs => :retry_in) END,
           enqueued_at = CASE WHEN o.status = 'pending' AND :countdown THEN now() + make_interval(secs => :retry_in) END
    FROM outcome o WHERE id = :id RETURNING endpoint_id, o.status
)
UPDATE webhook_endpoints p SET
    failing_since = CASE WHEN :ok THEN NULL ELSE COALESCE(p.failing_since, now()) END,
    enabled = :ok OR (p.enabled AND NOT p.failing_since <= now() - make_interval(secs => :disable_after)) IS NOT FALSE,
    disabled_at = CASE WHEN :ok THEN NULL
                       WHEN p.enabled AND p.failing_since <= now() - make_interval(secs => :disable_after) THEN now()
                       ELSE p.disabled_at END
FROM recorded r WHERE p.id = r.endpoint_id AND p.deleted_at IS NULL
RETURNING p.id, r.status, p.disabled_at = now() AS disabled_now
""")
# A disabled endpoint's pending deliveries end failed: no attempt is made for them any more.
_END_PENDING = text("""
UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, enqueued_at = NULL, updated_at = now(),
       last_error = COALESCE(last_error || '; ', '') || :reason
WHERE endpoint_id = :endpoint_id AND status = 'pending'
""")


@dataclass(frozen=True)
class Recorded:
    status: str  # the delivery's, after the attempt
    disabled: bool  # the attempt disabled the endpoint (its pending deliveries ended failed)


def record(conn: Connection, delivery_id: str, *, ok: bool, status_code: int | None, error: str | None,
           retry_in: float | None, countdown: bool, disable_after: timedelta) -> Recorded:
    """Record an attempt's outcome (retry_in None: no attempt is left, failed)."""
    status = (DeliveryStatus.SUCCEEDED if ok else
              DeliveryStatus.PENDING if retry_in is not None else DeliveryStatus.FAILED)
    row = conn.execute(_RECORD, {"id": delivery_id, "status": status, "ok": ok, "code": status_code, "error": error,
                                 "retry_in": retry_in or 0, "countdown": countdown,
                                 "disable_after": disable_after.total_seconds()}).first()
    if row is None:  # its endpoint was deleted meanwhile
        return Recorded(DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED, False)
    if row.disabled_now:
        conn.execute(_END_PENDING, {"endpoint_id": row.id, "reason": "the endpoint was disabled after failing every "
                                    f"attempt for {disable_after.total_seconds() / 86400:g} days"})
    return Recorded(row.status, bool(row.disabled_now))


# The literal predicate is the partial index webhook_deliveries_pending's.
_PENDING = text("""
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0),
       COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)
FROM webhook_deliveries WHERE status = 'pending'
""")


def pending(conn: Connection) -> tuple[int, float, float]:
    """How many deliveries are pending, the seconds since the oldest was created, and how long the one due first
    has been due (0: none; negative: none is due yet)."""
    count, age, overdue = conn.execute(_PENDING).one()
    return int(count), float(age), float(overdue)


# Active grants expiring within `within` that no grant.expiring was emitted for, marked as emitted; with the
# workspaces whose default account holds each (the grants_expiring index serves the window).
_EXPIRING = text("""
WITH noticed AS (
    UPDATE grants g SET expiring_noticed_at = now()
    FROM (SELECT billing_account_id, id FROM grants
          WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at > now()
            AND expires_at <= now() + make_interval(secs => :within) AND expiring_noticed_at IS NULL
          ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED) due
    WHERE g.billing_account_id = due.billing_account_id AND g.id = due.id
    RETURNING g.*
)
SELECT n.*, ARRAY(SELECT w.id FROM workspaces w WHERE w.default_billing_account_id = n.billing_account_id
                  ORDER BY w.id) AS workspace_ids
FROM noticed n
""")


def notice_expiring(conn: Connection, *, within: timedelta, limit: int) -> list[tuple[object, list[str]]]:
    """(grant row, workspace ids) of grants about to expire, each handed out once."""
    rows = conn.execute(_EXPIRING, {"within": within.total_seconds(), "limit": limit}).mappings().all()
    return [(row, list(row["workspace_ids"])) for row in rows]
