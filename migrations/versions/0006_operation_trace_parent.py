"""The W3C traceparent of the request that accepted an operation (worker.tracing): the outbox relay sends a
lost operation's message again in that request's trace. NULL when tracing was off; nullable and without a
default, the column is added without rewriting the table."""
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.execute("ALTER TABLE operations ADD COLUMN trace_parent TEXT")
