"""Users, keys, billing accounts, the append-only ledger, workspaces, operations."""
from alembic import op

revision = "0001"
down_revision = None

DDL = """
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    key_hash BYTEA NOT NULL UNIQUE,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE billing_accounts (
    id TEXT PRIMARY KEY,
    owner_user_id TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    currency TEXT NOT NULL DEFAULT 'usd',
    balance_cents BIGINT NOT NULL DEFAULT 0,
    is_user_default BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX billing_accounts_one_default_per_user ON billing_accounts (owner_user_id) WHERE is_user_default;
CREATE INDEX billing_accounts_owner ON billing_accounts (owner_user_id, created_at);

CREATE TABLE ledger_entries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    billing_account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    workspace_id TEXT,
    kind TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    balance_after_cents BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    reference TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT ledger_entries_amount_nonzero CHECK (amount_cents <> 0),
    CONSTRAINT ledger_entries_kind CHECK (kind IN ('intro_credit', 'credit_grant', 'stripe_topup',
        'x402_topup', 'usage', 'refund', 'adjustment'))
);
CREATE INDEX ledger_entries_account_id ON ledger_entries (billing_account_id, id DESC);
CREATE INDEX ledger_entries_account_kind_id ON ledger_entries (billing_account_id, kind, id DESC);

CREATE FUNCTION ledger_entries_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change();

CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_user_id TEXT NOT NULL REFERENCES users (id),
    default_billing_account_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE workspace_billing_accounts (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    billing_account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    linked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, billing_account_id)
);
CREATE INDEX workspace_billing_accounts_account ON workspace_billing_accounts (billing_account_id);

-- The default account must be one of the workspace's links; checked at commit.
ALTER TABLE workspaces ADD CONSTRAINT workspaces_default_is_linked
    FOREIGN KEY (id, default_billing_account_id)
    REFERENCES workspace_billing_accounts (workspace_id, billing_account_id)
    DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE workspace_members (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    user_id TEXT NOT NULL REFERENCES users (id),
    role TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id),
    CONSTRAINT workspace_members_role CHECK (role IN ('owner', 'admin', 'member'))
);
CREATE INDEX workspace_members_user ON workspace_members (user_id);

CREATE TABLE idempotency_keys (
    caller TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response_status INTEGER,
    response_body TEXT,
    response_headers JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    caller TEXT NOT NULL,
    idempotency_key TEXT,
    workspace_id TEXT,
    billing_account_id TEXT,
    payload JSONB NOT NULL,
    result JSONB,
    error JSONB,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT operations_status CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    CONSTRAINT operations_caller_idempotency_key UNIQUE (caller, idempotency_key)
);
CREATE INDEX operations_pending ON operations (updated_at) WHERE status IN ('queued', 'running');
"""


def upgrade() -> None:
    op.execute(DDL)
