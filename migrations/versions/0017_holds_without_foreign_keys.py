"""holds drops its two foreign keys (to billing_accounts and to workspaces): a hold creation checked both for each
row it inserted, after the statement that had just found them.

The one statement that inserts holds (domain.store.holds.RESERVE) takes the account it inserts from its own UPDATE
of that account's row, joined to the workspace by the id it inserts, so both exist when the hold is written; neither
table's rows are ever deleted. Each check ran a query per row and locked the parent row FOR KEY SHARE, a write (the
row's lock, logged) on the workspace and on the account for every hold, and on a workspace placing holds from many
connections at once a MultiXact per row. PostgreSQL's CPU per hold creation on one connection, 4,000 per batch,
six batches each, in turn: 0.285-0.375 ms (median 0.317) with them, 0.26-0.332 (median 0.268) without.
`billing audit` checks instead that every hold's account and workspace exist."""
from alembic import op

revision = "0017"
down_revision = "0016"

DDL = """
ALTER TABLE holds DROP CONSTRAINT holds_billing_account_id_fkey, DROP CONSTRAINT holds_workspace_id_fkey;
"""


def upgrade() -> None:
    op.execute(DDL)
