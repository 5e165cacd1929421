"""Outbound webhooks (endpoints, the events outbox, one delivery per event and endpoint) and billing settings.

webhook_events is the outbox: an event is written in the transaction of the change that causes it
(domain.store.webhook_events), together with a delivery row for each endpoint subscribed to it then; a
workspace with no endpoint subscribed gets no row at all. Deliveries are driven from their rows: a
dispatcher sends one task per due delivery, an attempt is claimed in a transaction of its own before the
HTTP call and recorded in another after it.

billing_settings holds a workspace's settings (lowBalanceCents here; auto top-up adds its columns).
grants.expiring_noticed_at marks the grants whose grant.expiring event was emitted, once per grant.
"""
from alembic import op

revision = "0010"
down_revision = "0009"

DDL = """
CREATE TABLE billing_settings (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces (id),
    low_balance_cents BIGINT CHECK (low_balance_cents >= 0),  -- NULL: no balance.low events
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    url TEXT NOT NULL,
    events TEXT[] NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,  -- whsec_...: kept as given, since every delivery is signed with it
    enabled BOOLEAN NOT NULL DEFAULT true,
    failing_since TIMESTAMPTZ,  -- the first failed attempt since the last success
    disabled_at TIMESTAMPTZ,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    deleted_at TIMESTAMPTZ
);
-- What an event's transaction looks up: the live endpoints of the workspaces concerned.
CREATE INDEX webhook_endpoints_workspace ON webhook_endpoints (workspace_id, created_at, id)
    WHERE deleted_at IS NULL;
-- The workspaces an account is the default of: balance and transaction events go to each.
CREATE INDEX workspaces_default_account ON workspaces (default_billing_account_id);

CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,  -- evt_...: the webhook-id, the same on every attempt
    workspace_id TEXT NOT NULL,
    type TEXT NOT NULL,
    data JSONB NOT NULL,
    billing_account_id TEXT,  -- with entry_id: the ledger entry whose transaction the payload shows
    entry_id BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_id TEXT NOT NULL REFERENCES webhook_events (id),
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ,  -- pending: when the next attempt is due
    enqueued_at TIMESTAMPTZ,  -- when a task message was last sent for it
    attempt_until TIMESTAMPTZ,  -- an attempt is in flight until then (a killed worker's ends by itself)
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, event_id),
    CONSTRAINT webhook_deliveries_status CHECK (status IN ('pending', 'succeeded', 'failed')),
    CONSTRAINT webhook_deliveries_due CHECK (status <> 'pending' OR next_attempt_at IS NOT NULL)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

ALTER TABLE grants ADD COLUMN expiring_noticed_at TIMESTAMPTZ;
"""


def upgrade() -> None:
    op.execute(DDL)
