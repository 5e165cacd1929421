"""Ready to shard by billing account (issue 18): the ledger's keys lead with billing_account_id, usage rollups are
kept per account, and a user's one default account is held by its id instead of a unique index over owners.

Distributed by billing_account_id (Citus), every unique key must include it; see docs/scaling.md and
tests/api/test_shard_ready_schema.py. Rebuilding these indexes takes a write lock on ledger_entries for as long
as the builds run: on a large ledger, run it in a maintenance window."""
from alembic import op

revision = "0009"
down_revision = "0008"

DDL = """
-- An entry's idempotency key is unique within its account: every key names something of one account (its
-- operation, checkout or charge), and a usage event's key its workspace, checked against the account debited.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey,
    ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY (billing_account_id, id),
    DROP CONSTRAINT ledger_entries_idempotency_key_key,
    ADD CONSTRAINT ledger_entries_account_key UNIQUE (billing_account_id, idempotency_key);
-- The primary key, read backwards, serves an account's newest entries.
DROP INDEX ledger_entries_account_id;

-- Rollups per account as well as per workspace: the batch that inserts usage entries moves only rows of the
-- account it debits. Rebuilt from the ledger, which they summarize.
ALTER TABLE usage_rollups ADD COLUMN billing_account_id TEXT;
DELETE FROM usage_rollups;
INSERT INTO usage_rollups (billing_account_id, workspace_id, hour, metric, usage_cents, quantity, events)
SELECT billing_account_id, workspace_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       metric, -SUM(amount_cents), SUM(quantity), COUNT(*)
FROM ledger_entries
WHERE kind = 'usage' AND metric IS NOT NULL AND workspace_id IS NOT NULL AND occurred_at IS NOT NULL  -- metered
GROUP BY 1, 2, 3, 4;  -- events only: a hold's capture is usage without a metric, never rolled up
ALTER TABLE usage_rollups ALTER COLUMN billing_account_id SET NOT NULL,
    DROP CONSTRAINT usage_rollups_pkey,
    ADD CONSTRAINT usage_rollups_pkey PRIMARY KEY (billing_account_id, workspace_id, hour, metric),
    ADD CONSTRAINT usage_rollups_account FOREIGN KEY (billing_account_id) REFERENCES billing_accounts (id);

-- A user's default account now has an id made from the user's (domain.ids.default_account_id), so the primary
-- key keeps it one per user; the accounts made before keep theirs, found by owner and flag.
DROP INDEX billing_accounts_one_default_per_user;
"""


def upgrade() -> None:
    op.execute(DDL)
