"""A secret key per purpose, made by the database itself: the permutation that shows ledger entry ids to
callers (domain.public_ids) needs one that every process shares and no configuration has to carry."""
from alembic import op

revision = "0005"
down_revision = "0004"

# gen_random_uuid() draws from pg_strong_random(): two of them give 244 random bits.
DDL = """
CREATE TABLE service_keys (
    name TEXT PRIMARY KEY,
    key BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO service_keys (name, key)
VALUES ('public_ids', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
"""


def upgrade() -> None:
    op.execute(DDL)
