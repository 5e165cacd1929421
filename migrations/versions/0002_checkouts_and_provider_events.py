"""Checkouts of both providers, stored Stripe events."""
from alembic import op

revision = "0002"
down_revision = "0001"

DDL = """
CREATE TABLE checkouts (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    billing_account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    amount_cents BIGINT NOT NULL,
    currency TEXT NOT NULL DEFAULT 'usd',
    created_by TEXT NOT NULL,
    idempotency_key TEXT,
    provider_ref TEXT,
    url TEXT,
    details JSONB NOT NULL DEFAULT '{}'::jsonb,
    network TEXT,
    payer TEXT,
    nonce TEXT,
    operation_id TEXT,
    failure_reason TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    CONSTRAINT checkouts_provider CHECK (provider IN ('stripe', 'x402')),
    CONSTRAINT checkouts_status CHECK (status IN ('pending', 'completed', 'expired', 'failed')),
    CONSTRAINT checkouts_amount_positive CHECK (amount_cents > 0),
    CONSTRAINT checkouts_provider_ref UNIQUE (provider, provider_ref),
    CONSTRAINT checkouts_x402_payment UNIQUE (network, payer, nonce),
    CONSTRAINT checkouts_idempotency_key UNIQUE (created_by, idempotency_key)
);
CREATE INDEX checkouts_workspace ON checkouts (workspace_id, created_at DESC, id DESC);
CREATE INDEX checkouts_pending ON checkouts (provider, created_at) WHERE status = 'pending';
CREATE INDEX checkouts_stripe_payment_intent ON checkouts ((details->>'paymentIntent')) WHERE provider = 'stripe';

CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    payload JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ,
    outcome TEXT
);
CREATE INDEX stripe_events_unprocessed ON stripe_events (received_at) WHERE processed_at IS NULL;
"""


def upgrade() -> None:
    op.execute(DDL)
