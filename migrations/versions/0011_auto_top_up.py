"""Auto top-up: each workspace's settings (columns of billing_settings), each billing account's Stripe Customer and
saved card, and the top-ups (the outbox of the off-session payments they make).

The settings are workspace-side, as spend limits are: the workspace's debits cross its threshold. The customer, its
card and the top-ups belong to the billing account that is charged and credited (keyed by it, ready to distribute).
A top-up is recorded in the transaction of the debit that crossed, keyed by that entry (its Stripe idempotency key
is made from the account and the entry); at most one per account is in flight (pending: its PaymentIntent not made
or its answer not recorded; processing: made, waiting for payment_intent.succeeded).
"""
from alembic import op

revision = "0011"
down_revision = "0010"

DDL = """
ALTER TABLE billing_settings
    ADD COLUMN auto_top_up_enabled BOOLEAN,  -- NULL: auto top-up not set up (the other columns NULL too)
    ADD COLUMN auto_top_up_threshold_cents BIGINT,
    ADD COLUMN auto_top_up_amount_cents BIGINT,
    ADD COLUMN auto_top_up_max_per_day INTEGER,
    ADD COLUMN auto_top_up_failures_in_a_row INTEGER NOT NULL DEFAULT 0,  -- three turn it off
    ADD CONSTRAINT billing_settings_auto_top_up CHECK (
        (auto_top_up_enabled IS NULL AND auto_top_up_threshold_cents IS NULL AND auto_top_up_amount_cents IS NULL
         AND auto_top_up_max_per_day IS NULL)
        OR (auto_top_up_enabled IS NOT NULL AND auto_top_up_threshold_cents BETWEEN 0 AND 100000000
            AND auto_top_up_amount_cents BETWEEN 500 AND 1000000 AND auto_top_up_max_per_day BETWEEN 1 AND 20));

CREATE TABLE stripe_customers (
    billing_account_id TEXT PRIMARY KEY REFERENCES billing_accounts (id),
    customer_id TEXT NOT NULL,
    payment_method_id TEXT,
    card_brand TEXT,
    card_last4 TEXT,
    saved_by_checkout_id TEXT,
    saved_at TIMESTAMPTZ,  -- when the checkout that saved the card completed: a later checkout's card replaces it
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE auto_top_ups (
    billing_account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    id TEXT NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    trigger_entry_id BIGINT NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    status TEXT NOT NULL DEFAULT 'pending',
    payment_intent_id TEXT,
    failure_code TEXT,
    failure_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (billing_account_id, id),
    CONSTRAINT auto_top_ups_trigger UNIQUE (billing_account_id, trigger_entry_id),
    CONSTRAINT auto_top_ups_trigger_entry FOREIGN KEY (billing_account_id, trigger_entry_id)
        REFERENCES ledger_entries (billing_account_id, id),
    CONSTRAINT auto_top_ups_status CHECK (status IN ('pending', 'processing', 'succeeded', 'failed'))
);
CREATE UNIQUE INDEX auto_top_ups_one_in_flight ON auto_top_ups (billing_account_id)
    WHERE status IN ('pending', 'processing');
CREATE INDEX auto_top_ups_unfinished ON auto_top_ups (updated_at) WHERE status IN ('pending', 'processing');
CREATE INDEX auto_top_ups_account_created ON auto_top_ups (billing_account_id, created_at);

-- Completed checkouts that asked to save their card and whose card is not saved yet (the relay re-sends them).
CREATE INDEX checkouts_card_to_save ON checkouts (completed_at)
    WHERE provider = 'stripe' AND status = 'completed' AND details ? 'savePaymentMethod' AND NOT details ? 'card';
"""


def upgrade() -> None:
    op.execute(DDL)
