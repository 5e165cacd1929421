"""Looking up an idempotency key on a hot account reads one entry of the unique (billing_account_id, idempotency_key)
index, not the account's history, even when the statistics were taken while every account held a single entry
(migration 0012 pins the planner's estimate of an account's entries; the statements look keys up one by one).
Planned in a transaction that is rolled back: the accounts, the entries and the statistics
ANALYZE takes of them are gone afterwards."""
import json

import pytest
from sqlalchemy import text

from domain.store import ledger, usage

ACCOUNTS = 3000  # one entry each when the statistics are taken
HOT_ENTRIES = 3000  # posted on one account after that


@pytest.fixture
def stale_statistics(engine):
    """A connection inside a transaction where ledger_entries' statistics say an account holds one entry, and
    account ba_probe1 holds HOT_ENTRIES + 1."""
    with engine.connect() as conn, conn.begin() as tx:
        for statement in (
                "INSERT INTO users (id, email) SELECT 'usr_probe' || g, 'probe' || g || '@example.com' "
                "FROM generate_series(1, :n) g",
                "INSERT INTO billing_accounts (id, owner_user_id, name) SELECT 'ba_probe' || g, 'usr_probe' || g, "
                "'probe' FROM generate_series(1, :n) g",
                "INSERT INTO ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents, "
                "idempotency_key) SELECT 'ba_probe' || g, 'intro_credit', 1000, 1000, 'intro' FROM generate_series(1, :n) g"):
            conn.execute(text(statement), {"n": ACCOUNTS})
        conn.execute(text("ANALYZE ledger_entries"))
        # A table this small may be read whole into a hash; a ledger in use is not: the index paths are compared.
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("""
            INSERT INTO ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents, idempotency_key)
            SELECT 'ba_probe1', 'credit_grant', 1, 1000 + g, 'op:' || g FROM generate_series(1, :n) g
        """), {"n": HOT_ENTRIES})
        yield conn
        tx.rollback()


def test_the_planner_takes_an_account_to_hold_twenty_entries_whatever_analyze_saw(stale_statistics):
    """The estimate the probes' plans rest on (migration 0012): ANALYZE saw one entry per account, the statistics
    say 20, so an index that reads an account's entries never looks as cheap as the unique key's one entry."""
    n_distinct = stale_statistics.execute(text(
        "SELECT n_distinct FROM pg_stats WHERE tablename = 'ledger_entries' AND attname = 'billing_account_id'")).scalar()
    assert n_distinct == -0.05


def _ledger_scans(node: dict) -> list[dict]:
    """The plan's nodes that read ledger_entries through an index."""
    found = [node] if node.get("Index Name", "").startswith("ledger_entries") else []
    for child in node.get("Plans", []):
        found += _ledger_scans(child)
    return found


def _plan(conn, statement, params) -> dict:
    return conn.execute(text("EXPLAIN (FORMAT JSON) " + statement.text), params).scalar()[0]["Plan"]


def test_a_batch_of_postings_probes_each_key_through_the_unique_index(stale_statistics):
    entries = json.dumps([{"account_id": "ba_probe1", "amount": 5, "key": f"op:new{i}", "workspace_id": None,
                           "description": "", "reference": None} for i in range(100)])
    scans = _ledger_scans(_plan(stale_statistics, ledger._POST_MANY, {"entries": entries, "kind": "credit_grant"}))
    assert scans and all(scan["Index Name"] == "ledger_entries_account_key" and
                         "idempotency_key" in scan["Index Cond"] for scan in scans), json.dumps(scans)


def test_a_usage_batch_looks_for_its_events_through_the_unique_index(stale_statistics):
    keys = json.dumps([usage.key("ws_probe", f"event-{i}") for i in range(100)])
    scans = _ledger_scans(_plan(stale_statistics, usage._PRIOR,
                                {"workspace_id": "ws_probe", "account_id": "ba_probe1", "keys": keys}))
    assert scans and all(scan["Index Name"] == "ledger_entries_account_key" and
                         "idempotency_key" in scan["Index Cond"] for scan in scans), json.dumps(scans)
