"""Usage columns on ledger entries, hourly usage rollups, and the stored rate-limit tier of each account."""
from alembic import op

revision = "0003"
down_revision = "0002"

# Adding columns rewrites no row (they are nullable, without defaults), so the append-only trigger,
# which refuses UPDATE and DELETE of rows, is not involved.
DDL = """
ALTER TABLE ledger_entries
    ADD COLUMN metric TEXT,
    ADD COLUMN quantity BIGINT,
    ADD COLUMN occurred_at TIMESTAMPTZ;

-- The usage overview: one workspace, one window of occurred_at; INCLUDE lets it run index-only.
CREATE INDEX ledger_entries_usage_overview ON ledger_entries (workspace_id, occurred_at)
    INCLUDE (amount_cents, quantity, metric) WHERE kind = 'usage';

-- Usage per workspace, UTC hour and metric, kept in the transaction that inserts the entries, so an
-- overview of a month reads at most 744 rows per metric instead of every entry.
CREATE TABLE usage_rollups (
    workspace_id TEXT NOT NULL,
    hour TIMESTAMPTZ NOT NULL,
    metric TEXT NOT NULL,
    usage_cents BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, hour, metric)
);

CREATE TABLE account_tiers (
    billing_account_id TEXT PRIMARY KEY REFERENCES billing_accounts (id),
    tier TEXT NOT NULL,
    reason TEXT NOT NULL,
    paid_cents BIGINT NOT NULL,
    balance_cents BIGINT NOT NULL,
    as_of_entry_id BIGINT NOT NULL DEFAULT 0,
    computed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX account_tiers_computed_at ON account_tiers (computed_at);
"""


def upgrade() -> None:
    op.execute(DDL)
