"""Idempotency windows and leases; operations and checkouts keyed by the key's scope; retry state.

An Idempotency-Key is free again after its window, so what was created under it must not block a new
request: operations and checkouts now carry the *scope* of the claim that created them (a random id, new
for every window, kept by the retry of a request whose first attempt died or answered 5xx), not the raw
key. Old rows keep their raw keys as scopes; no new scope can equal one (new scopes are random ids).
"""
from alembic import op

revision = "0004"
down_revision = "0003"

DDL = """
ALTER TABLE idempotency_keys
    ADD COLUMN scope TEXT,
    ADD COLUMN lease_token TEXT,
    ADD COLUMN lease_expires_at TIMESTAMPTZ;
UPDATE idempotency_keys SET scope = key;
ALTER TABLE idempotency_keys ALTER COLUMN scope SET NOT NULL;

ALTER TABLE operations RENAME COLUMN idempotency_key TO idempotency_scope;
ALTER TABLE operations RENAME CONSTRAINT operations_caller_idempotency_key TO operations_idempotency_scope;
ALTER TABLE operations
    ADD COLUMN last_error JSONB,
    ADD COLUMN next_attempt_at TIMESTAMPTZ;

ALTER TABLE checkouts RENAME COLUMN idempotency_key TO idempotency_scope;
ALTER TABLE checkouts RENAME CONSTRAINT checkouts_idempotency_key TO checkouts_idempotency_scope;
"""


def upgrade() -> None:
    op.execute(DDL)

