"""The migrated schema is ready to distribute by billing account (Citus): every ledger-side table carries the
account in its primary key and in each unique key, and its foreign keys to other ledger-side tables join on it,
so a money movement touches one shard. Read from the catalog of the migrated database, every table: a new
table is ledger-side unless it is named below with the reason it is not (docs/scaling.md, "Sharding")."""
from sqlalchemy import text

# Tables that are not distributed by billing account, and why.
NOT_LEDGER = {
    "alembic_version": "the migration tool's bookkeeping",
    "users": "identities, keyed by user; read when a key authenticates, before any account is known",
    "api_keys": "keyed by the key's hash, looked up on every request before any account is known",
    "workspaces": "keyed by workspace; its default account changes over time, so it belongs to no one account",
    "workspace_members": "membership, keyed by workspace and user",
    "idempotency_keys": "keyed by (caller, Idempotency-Key): a request is claimed before its account is resolved",
    "service_keys": "a handful of service-wide secrets (the public-id key): a reference table",
    "stripe_events": "Stripe's inbox, keyed by Stripe's event id: stored on receipt, before its account is known",
    # Workspace-side like workspaces: a workspace's month of spending crosses the accounts it was bound to over
    # time. Not ready either: a usage debit or a hold updates workspace_spend in the transaction that moves the
    # account's money, which on Citus spans the workspace's shard and the account's (docs/scaling.md).
    "spend_limits": "a workspace's monthly limit and alert steps, keyed by workspace",
    "workspace_spend": "what a workspace spent per UTC month (usage and captures), keyed by (workspace, month)",
    "spend_limit_alerts": "the alert steps a workspace crossed per month, keyed by (workspace, month, percent)",
    # Webhooks are the workspace's: its endpoints, the events sent to them and their deliveries. An account's
    # posting writes events of the workspaces it is the default of, in its transaction (as workspace_spend).
    "billing_settings": "a workspace's settings (lowBalanceCents, auto top-up), keyed by workspace",
    "webhook_endpoints": "a workspace's receivers, keyed by id and listed by workspace",
    "webhook_events": "the events outbox, keyed by event id (the webhook-id receivers deduplicate on)",
    "webhook_deliveries": "one per event and endpoint, keyed by id, claimed by the delivery tasks",
}

# Ledger-side tables that are not ready yet: each carries billing_account_id, but a key of theirs must stay
# global. Applying one of their rows is, on Citus, a transaction over two shards until they are re-keyed.
NOT_YET = {
    "operations": "the outbox of accepted requests, found by id (GET /operations/{id}, the task message) and by "
                  "the caller's idempotency scope, whatever account the workspace defaults to by the retry",
    "checkouts": "an external payment is credited once however many workspaces present it: unique "
                 "(provider, provider_ref) and (network, payer, nonce) must hold across all accounts",
    "holds": "named in the API by workspace and id (no account in the path), and claimed once per caller's "
             "idempotency scope: unique (workspace_id, id) and (created_by, idempotency_scope) stay global",
}

# The column a ledger-side table is distributed by, where it is not billing_account_id.
DISTRIBUTED_BY = {"billing_accounts": "id"}

_TABLES = text("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')")
_COLUMNS = text("""
SELECT c.relname, a.attname, a.attnotnull FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
""")
# Unique indexes (primary keys included), with their key columns; an expression column has no name (NULL).
_UNIQUE = text("""
SELECT t.relname, i.relname AS index, x.indisprimary, x.indpred IS NOT NULL AS partial,
       array_agg(a.attname ORDER BY k.ord) AS columns
FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
CROSS JOIN LATERAL unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE n.nspname = 'public' AND x.indisunique GROUP BY 1, 2, 3, 4
""")
_FOREIGN = text("""
SELECT f.conname, t.relname, r.relname AS refers_to,
       ARRAY(SELECT a.attname FROM unnest(f.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n ORDER BY k.o) AS columns,
       ARRAY(SELECT a.attname FROM unnest(f.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.n ORDER BY k.o) AS referenced
FROM pg_constraint f JOIN pg_class t ON t.oid = f.conrelid JOIN pg_class r ON r.oid = f.confrelid
JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public' AND f.contype = 'f'
""")


def catalog(engine):
    with engine.connect() as conn:
        tables = set(conn.execute(_TABLES).scalars())
        columns = {(t, c): not_null for t, c, not_null in conn.execute(_COLUMNS)}
        unique = conn.execute(_UNIQUE).all()
        foreign = conn.execute(_FOREIGN).all()
    return tables, columns, unique, foreign


def ledger_side(tables: set[str]) -> set[str]:
    return tables - NOT_LEDGER.keys() - NOT_YET.keys()


def key_of(table: str) -> str:
    return DISTRIBUTED_BY.get(table, "billing_account_id")


def test_every_ledger_side_table_carries_a_not_null_billing_account(engine):
    tables, columns, _, _ = catalog(engine)
    missing = sorted(t for t in ledger_side(tables) if not columns.get((t, key_of(t))))
    assert missing == [], f"tables without a NOT NULL distribution column (or named in NOT_LEDGER): {missing}"
    assert sorted(t for t in NOT_YET if (t, "billing_account_id") not in columns) == []


def test_every_ledger_side_table_has_a_primary_key_that_includes_the_account(engine):
    tables, _, unique, _ = catalog(engine)
    keyed = {table for table, _, primary, _, cols in unique if primary and key_of(table) in cols}
    assert sorted(ledger_side(tables) - keyed) == []


def test_every_unique_key_of_a_ledger_side_table_includes_the_account(engine):
    tables, _, unique, _ = catalog(engine)
    global_keys = sorted((table, index, cols) for table, index, _, _, cols in unique
                         if table in ledger_side(tables) and key_of(table) not in cols)
    assert global_keys == [], "a unique key a shard cannot check alone"


def test_foreign_keys_between_ledger_side_tables_join_on_the_account(engine):
    tables, _, _, foreign = catalog(engine)
    ledger = ledger_side(tables)
    crossing = sorted(name for name, table, refers_to, cols, referenced in foreign
                      if table in ledger and refers_to in ledger
                      and (key_of(table), key_of(refers_to)) not in zip(cols, referenced))
    assert crossing == [], "a foreign key between two ledger-side tables that is not co-located"


def test_the_named_exceptions_are_tables_that_exist(engine):
    tables, _, _, _ = catalog(engine)
    assert sorted((NOT_LEDGER.keys() | NOT_YET.keys() | DISTRIBUTED_BY.keys()) - tables) == []
    assert all(reason.strip() for reason in (NOT_LEDGER | NOT_YET).values())


def test_the_not_yet_ready_tables_still_have_a_global_unique_key(engine):
    """When one is re-keyed, it leaves NOT_YET and the checks above cover it."""
    tables, _, unique, _ = catalog(engine)
    still_global = {table for table, _, _, _, cols in unique if table in NOT_YET and "billing_account_id" not in cols}
    assert still_global == NOT_YET.keys()
