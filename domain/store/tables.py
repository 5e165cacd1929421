"""Table definitions (SQLAlchemy Core); migrations/ creates them."""
from sqlalchemy import (
    BigInteger, Boolean, CheckConstraint, Column, DateTime, ForeignKey, ForeignKeyConstraint,
    Identity, Index, Integer, LargeBinary, MetaData, Table, Text, UniqueConstraint, func, text,
)
from sqlalchemy.dialects.postgresql import JSONB

from domain.names import ENTRY_KINDS

metadata = MetaData()

ROLES = ("owner", "admin", "member")


def _now() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


users = Table(
    "users", metadata,
    Column("id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("name", Text),
    _now(),
    Index("users_email_key", func.lower(text("email")), unique=True),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, ForeignKey("users.id"), nullable=False),
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    Column("revoked_at", DateTime(timezone=True)),
    _now(),
)

billing_accounts = Table(
    "billing_accounts", metadata,
    Column("id", Text, primary_key=True),
    Column("owner_user_id", Text, ForeignKey("users.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("currency", Text, nullable=False, server_default="usd"),
    Column("balance_cents", BigInteger, nullable=False, server_default="0"),
    # One per user: its id is made from the user's (domain.ids.default_account_id), so the key holds the rule.
    Column("is_user_default", Boolean, nullable=False, server_default="false"),
    _now(),
    Index("billing_accounts_owner", "owner_user_id", "created_at"),
)

ledger_entries = Table(
    "ledger_entries", metadata,
    # Keys lead with the account: the ledger can be distributed by it (docs/scaling.md).
    Column("billing_account_id", Text, ForeignKey("billing_accounts.id"), primary_key=True),
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("workspace_id", Text),
    Column("kind", Text, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("balance_after_cents", BigInteger, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("reference", Text),
    Column("idempotency_key", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()),
    Column("metric", Text),  # usage entries: what was used, how much, and when
    Column("quantity", BigInteger),
    Column("occurred_at", DateTime(timezone=True)),
    CheckConstraint("amount_cents <> 0", name="ledger_entries_amount_nonzero"),
    CheckConstraint("kind IN (%s)" % ", ".join(f"'{k}'" for k in ENTRY_KINDS), name="ledger_entries_kind"),
    UniqueConstraint("billing_account_id", "idempotency_key", name="ledger_entries_account_key"),
    Index("ledger_entries_account_kind_id", "billing_account_id", "kind", text("id DESC")),
    Index("ledger_entries_usage_overview", "workspace_id", "occurred_at",
          postgresql_include=["amount_cents", "quantity", "metric"], postgresql_where=text("kind = 'usage'")),
    Index("ledger_entries_account_created", "billing_account_id", "created_at", "id",
          postgresql_include=["balance_after_cents"]),
)

grants = Table(
    "grants", metadata,
    Column("billing_account_id", Text, ForeignKey("billing_accounts.id"), primary_key=True),
    Column("id", Text, primary_key=True),
    Column("entry_id", BigInteger, nullable=False),  # the credit that made it
    Column("source", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("amount_cents", BigInteger, nullable=False),
    Column("opened_cents", BigInteger, nullable=False),  # below amount when the credit paid off a debt first
    Column("remaining_cents", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("closed_entry_id", BigInteger),  # the entry that took it to zero
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("billing_account_id", "entry_id", name="grants_one_per_entry"),
)

grant_draws = Table(
    "grant_draws", metadata,
    Column("billing_account_id", Text, primary_key=True),
    Column("grant_id", Text, primary_key=True),
    Column("entry_id", BigInteger, primary_key=True),  # the (last) entry of the movement that drew
    Column("amount_cents", BigInteger, nullable=False),
    Column("remaining_after_cents", BigInteger, nullable=False),
)

workspaces = Table(
    "workspaces", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner_user_id", Text, ForeignKey("users.id"), nullable=False),
    Column("default_billing_account_id", Text, nullable=False),
    _now(),
    # The default account must be one of the workspace's links; checked at commit.
    ForeignKeyConstraint(["id", "default_billing_account_id"],
                         ["workspace_billing_accounts.workspace_id",
                          "workspace_billing_accounts.billing_account_id"],
                         name="workspaces_default_is_linked", deferrable=True, initially="DEFERRED",
                         use_alter=True),
)

workspace_billing_accounts = Table(
    "workspace_billing_accounts", metadata,
    Column("workspace_id", Text, ForeignKey("workspaces.id"), primary_key=True),
    Column("billing_account_id", Text, ForeignKey("billing_accounts.id"), primary_key=True),
    Column("linked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("workspace_billing_accounts_account", "billing_account_id"),
)

workspace_members = Table(
    "workspace_members", metadata,
    Column("workspace_id", Text, ForeignKey("workspaces.id"), primary_key=True),
    Column("user_id", Text, ForeignKey("users.id"), primary_key=True),
    Column("role", Text, nullable=False),
    _now(),
    CheckConstraint("role IN ('owner', 'admin', 'member')", name="workspace_members_role"),
    Index("workspace_members_user", "user_id"),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("caller", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("response_status", Integer),
    Column("response_body", Text),
    Column("response_headers", JSONB),
    _now(),  # the window's start
    Column("scope", Text, nullable=False),  # what the request creates is unique per scope (see store.idempotency)
    Column("lease_token", Text),  # the process running the request, while it runs
    Column("lease_expires_at", DateTime(timezone=True)),
)

operations = Table(
    "operations", metadata,
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="queued"),
    Column("caller", Text, nullable=False),
    Column("idempotency_scope", Text),
    Column("workspace_id", Text),
    Column("billing_account_id", Text),
    Column("payload", JSONB, nullable=False),
    Column("result", JSONB),
    Column("error", JSONB),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", JSONB),  # the transient cause of the last failed attempt, while it is retried
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("enqueued_at", DateTime(timezone=True)),
    Column("trace_parent", Text),  # the accepting request's W3C traceparent (worker.tracing); NULL: not traced
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="operations_status"),
    Index("operations_idempotency_scope", "caller", "idempotency_scope", unique=True,
          postgresql_where=text("idempotency_scope IS NOT NULL")),
    Index("operations_pending", "updated_at", postgresql_where=text("status IN ('queued', 'running')")),
)

checkouts = Table(
    "checkouts", metadata,
    Column("id", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("workspace_id", Text, nullable=False),
    Column("billing_account_id", Text, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", Text, nullable=False, server_default="usd"),
    Column("created_by", Text, nullable=False),
    Column("idempotency_scope", Text),
    Column("provider_ref", Text),  # the Stripe Checkout Session id; the x402 authorization nonce
    Column("url", Text),
    Column("details", JSONB, nullable=False, server_default="{}"),
    Column("network", Text),
    Column("payer", Text),
    Column("nonce", Text),
    Column("operation_id", Text),
    Column("failure_reason", Text),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True)),
)

stripe_events = Table(
    "stripe_events", metadata,
    Column("id", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True)),
    Column("outcome", Text),
)

account_tiers = Table(
    "account_tiers", metadata,
    Column("billing_account_id", Text, ForeignKey("billing_accounts.id"), primary_key=True),
    Column("tier", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("paid_cents", BigInteger, nullable=False),
    Column("balance_cents", BigInteger, nullable=False),
    Column("as_of_entry_id", BigInteger, nullable=False, server_default="0"),  # newest entry seen
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("account_tiers_computed_at", "computed_at"),
)

service_keys = Table(
    "service_keys", metadata,
    Column("name", Text, primary_key=True),
    Column("key", LargeBinary, nullable=False),
    _now(),
)

usage_rollups = Table(
    "usage_rollups", metadata,
    Column("billing_account_id", Text, ForeignKey("billing_accounts.id"), primary_key=True),
    Column("workspace_id", Text, primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),  # the UTC hour's start
    Column("metric", Text, primary_key=True),
    Column("usage_cents", BigInteger, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
)
