"""The operations' idempotency-scope unique index holds only the operations queued under a scope.

Most operations have none (those queued without an Idempotency-Key: credits, captures, usage
batches and tier refreshes sent without one): each had a NULL entry in operations_idempotency_scope, written once
when it was queued and again when the worker marked it succeeded (that update changes the status and updated_at,
which operations_pending covers, so it is never heap-only and writes an entry in every index). Partial, the index
is written for the scoped ones only, as holds_idempotency_scope is (0013): an unscoped operation's insert writes
3 WAL records where it wrote 4, its update to succeeded 2 where it wrote 3 (EXPLAIN (ANALYZE, WAL))."""
from alembic import op

revision = "0014"
down_revision = "0013"

DDL = """
ALTER TABLE operations DROP CONSTRAINT operations_idempotency_scope;
CREATE UNIQUE INDEX operations_idempotency_scope ON operations (caller, idempotency_scope)
    WHERE idempotency_scope IS NOT NULL;
"""


def upgrade() -> None:
    op.execute(DDL)
