"""The two-commit credit ceiling of issue 14: pgbench doing a queued credit's durable work as the service
does it, the accept and then the apply, one transaction each, on copies of the tables the two write.

A credit commits twice: the API's accept (the operation row under its unique scope, and the
Idempotency-Key's first answer beside it) before its 202, then the worker's apply (lock the account, insert
the entry under the operation's key and move the cached balance, mark the operation succeeded). Each
statement is the service's own (domain/store/operations.py, idempotency.py, ledger.py, grants.py: the credit's
grant opens beside its entry), one credit per
transaction pair, without the batching the service may do: the moonshot is to beat it by batching.
"""
import re

import psycopg

from bench.harness import SetupError, log, run_pgbench
from domain.ids import SQL_HEX
from domain.store import ledger

SCHEMA = "ceiling2"
TABLES = ("billing_accounts", "ledger_entries", "grants", "operations", "idempotency_keys")  # what the two write

# \gset keeps a returned row's columns as variables (op_id, op_billing_account_id, ... and e_id, ...) for the
# statements after it, as the service keeps the operation it inserted (its scope, which the service holds
# already, is returned for that). ':' inside a literal would read as a variable, hence chr(58).
SCRIPT = """\\set n random({first}, {last})
\\set amount random(1, 5000)
BEGIN;
INSERT INTO {s}.operations (id, kind, caller, idempotency_scope, workspace_id, billing_account_id, payload,
                            trace_parent)
SELECT 'op_' || {hex}, 'credit', 'operator',
       'idem_' || {hex}, w.id, w.default_billing_account_id,
       CAST('{{"amountCents": ' || :amount || ', "description": "bench credit"}}' AS jsonb), NULL
FROM public.workspaces w WHERE w.id = 'ws_' || md5('w' || CAST(:n AS text))
ON CONFLICT (caller, idempotency_scope) WHERE idempotency_scope IS NOT NULL DO NOTHING
RETURNING id, kind, status, caller, workspace_id, billing_account_id, payload, result, error, attempts,
          created_at, updated_at, last_error, next_attempt_at, idempotency_scope \\gset op_
INSERT INTO {s}.idempotency_keys AS k (caller, key, fingerprint, scope, response_status, response_body,
                                       response_headers, lease_token, lease_expires_at)
VALUES ('operator', 'bench-' || :op_id, encode(sha256(convert_to(:op_id, 'UTF8')), 'hex'), :op_idempotency_scope,
        202, '{{"id": "' || :op_id || '", "kind": "credit", "status": "queued", "result": null, "error": null, '
             || '"attempts": 0, "lastError": null, "nextAttemptAt": null, "createdAt": "' || :op_created_at
             || '", "updatedAt": "' || :op_updated_at || '"}}',
        CAST('{{"Content-Type": "application/json", "Location": "/operations/' || :op_id || '"}}' AS jsonb),
        CAST(NULL AS text), CASE WHEN CAST(NULL AS text) IS NULL THEN NULL ELSE now() + make_interval(secs => 30) END)
ON CONFLICT (caller, key) DO UPDATE
SET scope = CASE WHEN (k.fingerprint = EXCLUDED.fingerprint AND k.created_at >= now() - make_interval(secs => 86400))
                 THEN k.scope ELSE EXCLUDED.scope END,
    fingerprint = EXCLUDED.fingerprint, response_status = EXCLUDED.response_status,
    response_body = EXCLUDED.response_body, response_headers = EXCLUDED.response_headers,
    lease_token = EXCLUDED.lease_token, lease_expires_at = EXCLUDED.lease_expires_at, created_at = now()
WHERE (k.created_at < now() - make_interval(secs => 86400)
       OR (k.response_status IS NULL AND (k.lease_expires_at IS NULL OR k.lease_expires_at < now())))
RETURNING k.scope;
COMMIT;
BEGIN;
{posting} \\gset e_
{grant}
UPDATE {s}.operations o SET status = 'succeeded',
       result = CAST('{{"transactionId": "txn_' || :e_id || '", "billingAccountId": "' || :op_billing_account_id
                     || '", "amountCents": ' || :amount || ', "balanceAfterCents": ' || :e_balance_after_cents
                     || '}}' AS jsonb),
       error = NULL, attempts = o.attempts + 1, updated_at = now(), last_error = NULL, next_attempt_at = NULL
WHERE o.id = :op_id;
COMMIT;
"""

# The grant a credit opens beside its entry, as domain/store/grants.py's _OPEN opens it (the entry's columns
# kept by \gset e_ from the posting before it).
GRANT = """INSERT INTO {s}.grants (billing_account_id, id, entry_id, source, category, priority, expires_at,
                        amount_cents, opened_cents, remaining_cents, status, closed_entry_id, created_at)
SELECT :e_billing_account_id, 'grt_' || {hex}, CAST(:e_id AS bigint),
       '{source}', '{category}', 50, NULL, CAST(:e_amount_cents AS bigint), o.cents, o.cents,
       CASE WHEN o.cents > 0 THEN 'active' ELSE 'depleted' END, CASE WHEN o.cents = 0 THEN CAST(:e_id AS bigint) END,
       CAST(:e_created_at AS timestamptz)
FROM (SELECT LEAST(CAST(:e_amount_cents AS bigint), GREATEST(CAST(:e_balance_after_cents AS bigint), 0)) AS cents) o;"""

# After the run: every credit accepted once, applied once, and the copied accounts still add up.
CHECK = """
SELECT (SELECT count(*) FROM {s}.operations),
       (SELECT count(*) FROM {s}.operations WHERE status <> 'succeeded'),
       (SELECT count(*) FROM {s}.idempotency_keys),
       (SELECT count(*) FROM {s}.operations o WHERE (SELECT count(*) FROM {s}.ledger_entries e
                                                     WHERE e.idempotency_key = 'op:' || o.id) <> 1),
       (SELECT count(*) FROM {s}.billing_accounts a
        WHERE a.balance_cents <> (SELECT COALESCE(SUM(e.amount_cents), 0) FROM {s}.ledger_entries e
                                  WHERE e.billing_account_id = a.id))
"""


def copy_tables(conn: psycopg.Connection, schema: str, tables: tuple[str, ...]) -> None:
    """Copies of public's tables in `schema`: columns, defaults, identity, CHECKs, indexes, storage parameters, rows,
    then their foreign keys (to the copy where the referenced table is copied) and triggers (the ledger's
    append-only)."""
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute("SET search_path TO pg_catalog")  # so that every name below comes schema-qualified
    try:
        for table in tables:
            conn.execute(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)")
            options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
                                   (f"public.{table}",)).fetchone()[0]
            if options:  # LIKE leaves out the table's own storage parameters (a fillfactor)
                conn.execute(f"ALTER TABLE {schema}.{table} SET ({', '.join(options)})")
            conn.execute(f"INSERT INTO {schema}.{table} OVERRIDING SYSTEM VALUE SELECT * FROM public.{table}")
            for (column,) in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                          "AND attidentity <> ''", (f"{schema}.{table}",)).fetchall():
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{schema}.{table}', '{column}'), max({column})) "
                             f"FROM {schema}.{table} HAVING max({column}) IS NOT NULL")
        owned = "c.conrelid = ANY(%(tables)s::regclass[])"
        names = [f"public.{t}" for t in tables]
        keys = conn.execute(f"SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) "
                            f"FROM pg_constraint c WHERE c.contype = 'f' AND {owned}", {"tables": names}).fetchall()
        triggers = conn.execute("SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE NOT t.tgisinternal "
                                "AND t.tgrelid = ANY(%(tables)s::regclass[])", {"tables": names}).fetchall()
        for owner, name, definition in keys:
            for table in tables:
                definition = definition.replace(f"REFERENCES public.{table}(", f"REFERENCES {schema}.{table}(")
            conn.execute(f"ALTER TABLE {schema}.{owner.split('.', 1)[1]} ADD CONSTRAINT {name} {definition}")
        for (definition,) in triggers:
            for table in tables:
                definition = definition.replace(f" ON public.{table} ", f" ON {schema}.{table} ")
            conn.execute(definition)
    finally:
        conn.execute("RESET search_path")
    conn.execute(f"ANALYZE {', '.join(f'{schema}.{t}' for t in tables)}")


def posting_sql(schema: str, **values: str) -> str:
    """domain/store/ledger.py's _POST as the service sends it, on the copies in `schema`, each of its parameters
    the SQL given (a pgbench variable, a literal)."""
    sql = re.sub(r"\b(ledger_entries|billing_accounts)\b", rf"{schema}.\1", ledger._POST.text.strip())
    return re.sub(r"(?<!:):(\w+)", lambda m: values[m.group(1)], sql)


def script(first: int, last: int) -> str:
    """The pgbench script: a credit to workspace n (random in first..last), accepted then applied."""
    amount = "CAST(:amount AS bigint)"
    posting = posting_sql(SCHEMA, workspace_id=":op_workspace_id", kind="'credit_grant'", amount=amount,
                          description="'bench credit'", reference=":op_id", key="'op' || chr(58) || :op_id",
                          account_id=":op_billing_account_id", allow_negative="false")
    return SCRIPT.format(first=first, last=last, s=SCHEMA, posting=posting, hex=SQL_HEX,
                         grant=GRANT.format(s=SCHEMA, source="operator", category="promotional", hex=SQL_HEX))


def two_commit_ceiling(url: str, first: int, last: int, clients: int, seconds: int) -> dict:
    """pgbench of SCRIPT on copies of the tables (workspaces first..last, as harness.SEED makes them): credits
    accepted and applied per second. Run it before the service starts; the copies are dropped after."""
    with psycopg.connect(url, autocommit=True) as conn:
        copy_tables(conn, SCHEMA, TABLES)
    text = script(first, last)
    run = run_pgbench(url, text, clients, seconds, "two-commits", details=True)
    with psycopg.connect(url, autocommit=True) as conn:
        operations, unfinished, keys, not_once, unbalanced = conn.execute(CHECK.format(s=SCHEMA)).fetchone()
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")  # its rows would add to the service's table scans
    if unfinished or not_once or unbalanced or keys != operations or operations < (run["transactions"] or 0):
        raise SetupError(f"the two-commit ceiling's copies do not add up: {operations} operations, {unfinished} "
                         f"not succeeded, {keys} keys, {not_once} not posted once, {unbalanced} accounts off")
    log(f"two-commit credit ceiling: {run['tps']:.0f} credits/s (accept + apply, {clients} pgbench clients)")
    return run | {"sql": text, "commits_per_credit": 2}
