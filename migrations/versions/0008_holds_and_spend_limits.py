"""Holds (reserve now, capture or release later) and monthly spend limits per workspace.

billing_accounts.held_cents is what the account's unsettled holds reserve, kept in the transactions that reserve
and settle them under the account's row lock: available = balance - held_cents, read with the balance. holds
carries billing_account_id in its primary key; a hold is named in the API by its workspace and id (unique), so
that look-up finds one row wherever it lives, and the statements that move money on it filter on its account.

Spend limits, what each workspace spent per UTC month and the alert steps it crossed are workspace-side (a
workspace's spending crosses the accounts it was bound to over time): keyed by workspace_id. The month's
spending so far is filled in from the ledger's usage.
"""
from alembic import op

revision = "0008"
down_revision = "0007"

DDL = """
ALTER TABLE billing_accounts ADD COLUMN held_cents BIGINT NOT NULL DEFAULT 0;
ALTER TABLE billing_accounts ADD CONSTRAINT billing_accounts_held_cents CHECK (held_cents >= 0);

CREATE TABLE holds (
    billing_account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    id TEXT NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    amount_cents BIGINT NOT NULL,
    captured_cents BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'active',
    description TEXT NOT NULL DEFAULT '',
    reference TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    idempotency_scope TEXT,
    capture_operation_id TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    settled_at TIMESTAMPTZ,  -- when it stopped reserving: released, expired, or its capture applied
    PRIMARY KEY (billing_account_id, id),
    CONSTRAINT holds_in_workspace UNIQUE (workspace_id, id),
    CONSTRAINT holds_idempotency_scope UNIQUE (created_by, idempotency_scope),
    CONSTRAINT holds_amounts CHECK (amount_cents > 0 AND captured_cents BETWEEN 0 AND amount_cents),
    CONSTRAINT holds_status CHECK (status IN ('active', 'captured', 'released', 'expired')),
    CONSTRAINT holds_active_reserves CHECK (status <> 'active' OR settled_at IS NULL)
);
CREATE INDEX holds_workspace_created ON holds (workspace_id, created_at DESC, id DESC);
CREATE INDEX holds_expiring ON holds (expires_at) WHERE status = 'active';
-- What a workspace's unsettled holds reserve (the spend limit counts them), and an account's as of an instant.
CREATE INDEX holds_reserved_by_workspace ON holds (workspace_id) INCLUDE (amount_cents) WHERE settled_at IS NULL;
CREATE INDEX holds_account_created ON holds (billing_account_id, created_at) INCLUDE (amount_cents, settled_at);

CREATE TABLE spend_limits (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces (id),
    monthly_limit_cents BIGINT CHECK (monthly_limit_cents >= 0),
    alert_percents INTEGER[] NOT NULL DEFAULT '{50,80,100}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE workspace_spend (
    workspace_id TEXT NOT NULL,
    month DATE NOT NULL,  -- the UTC month's first day
    spent_cents BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, month)
);

CREATE TABLE spend_limit_alerts (
    workspace_id TEXT NOT NULL,
    month DATE NOT NULL,
    percent INTEGER NOT NULL,
    limit_cents BIGINT NOT NULL,
    spent_cents BIGINT NOT NULL,  -- the month's spending once the crossing movement was applied
    crossed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, month, percent)
);

INSERT INTO workspace_spend (workspace_id, month, spent_cents)
SELECT workspace_id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, -SUM(amount_cents)
FROM ledger_entries
WHERE kind = 'usage' AND workspace_id IS NOT NULL
  AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
GROUP BY workspace_id;
"""


def upgrade() -> None:
    op.execute(DDL)
