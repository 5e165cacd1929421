"""Balances now and as of any instant: availableCents, the paid/promotional split and the next expiry, read from
the balance chain and the grants' draws as they stood right after the last entry at or before the instant."""
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import event, text

from domain.grants import PAID
from domain.models import KeyHolder
from domain.names import GrantSource, Task
from domain.services.users import hash_key
from domain.store import balances
from tests.api.checks import assert_problem
from tests.factories import new_linked_account, post

MICRO = timedelta(microseconds=1)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entries(engine, account: str) -> list[tuple[datetime, int]]:
    """(created_at, balance after) of the account's entries, to the microsecond, in ledger order."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT created_at, balance_after_cents FROM ledger_entries WHERE billing_account_id = :a ORDER BY id"),
            {"a": account})]


def _apply(services, queue) -> None:
    for name, kwargs in list(queue.sent):
        if name == Task.APPLY_OPERATION:
            services.operations.apply(kwargs["operation_id"])
    queue.sent.clear()


def _view(body: dict) -> tuple:
    expiry = body["nextExpiry"] and (body["nextExpiry"]["amountCents"], body["nextExpiry"]["expiresAt"][:10])
    return body["balanceCents"], body["availableCents"], body["paidCents"], body["promotionalCents"], expiry


@pytest.fixture
def history(api, services, queue, engine):
    """Intro 1000; an operator credit of 500 at priority 10 expiring in two days; usage of 300 in one batch of
    three events (drawn from that credit); a paid grant of 700; the credit's rest expired (200)."""
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    account = owner.default_account_id
    expires = datetime.now(UTC) + timedelta(days=2)
    assert api.operator("POST", f"/workspaces/{ws}/billing/credits", json={
        "amountCents": 500, "priority": 10, "expiresAt": _iso(expires)}).status_code == 202
    _apply(services, queue)
    events = [{"eventId": f"e{n}", "metric": "tokens", "quantity": 1, "amountCents": 100} for n in range(3)]
    assert api.operator("POST", f"/workspaces/{ws}/billing/usage", json={"events": events}).status_code == 202
    _apply(services, queue)
    post(services, account, 700, kind="stripe_topup", terms=PAID[GrantSource.STRIPE])
    with engine.begin() as conn:
        conn.execute(text("UPDATE grants SET expires_at = now() WHERE billing_account_id = :a AND priority = 10"),
                     {"a": account})
    services.grants.expire_due()
    return owner, ws, account, expires.strftime("%Y-%m-%d")


def test_each_instant_reads_the_balance_and_grants_right_after_the_last_entry_before_it(api, engine, history):
    owner, ws, account, expiry_day = history
    entries = _entries(engine, account)
    assert [after for _, after in entries] == [1000, 1500, 1400, 1300, 1200, 1900, 1700]
    expected = [(1000, 1000, 0, 1000, None), (1500, 1500, 0, 1500, (500, expiry_day)),
                (1200, 1200, 0, 1200, (200, expiry_day)), (1200, 1200, 0, 1200, (200, expiry_day)),
                (1200, 1200, 0, 1200, (200, expiry_day)), (1900, 1900, 700, 1200, (200, None)),
                (1700, 1700, 700, 1000, None)]
    for (created, _), want in zip(entries, expected):
        for path in (f"/billing-accounts/{account}/balance", f"/workspaces/{ws}/billing/balance"):
            found = api.call("GET", path, owner.key, params={"asOf": _iso(created)})
            assert found.status_code == 200, found.text
            got = _view(found.json)
            assert got[:4] == want[:4] and (got[4] and got[4][0]) == (want[4] and want[4][0]), (created, got, want)
            assert found.json["asOf"].startswith(_iso(created)[:23])
    # the three events of one batch share their instant: a balance sees all of them or none
    assert entries[2][0] == entries[3][0] == entries[4][0]
    between = _view(api.call("GET", f"/billing-accounts/{account}/balance", owner.key,
                             params={"asOf": _iso(entries[2][0] - MICRO)}).json)
    assert between[:4] == (1500, 1500, 0, 1500)
    now = api.call("GET", f"/workspaces/{ws}/billing/balance", owner.key).json
    assert _view(now) == (1700, 1700, 700, 1000, None) and now["workspaceId"] == ws


def test_before_the_account_existed_is_404_and_an_instant_to_come_reads_as_now(api, engine, history):
    owner, ws, account, _ = history
    created = _entries(engine, account)[0][0]
    for path in (f"/billing-accounts/{account}/balance", f"/workspaces/{ws}/billing/balance"):
        assert_problem(api.call("GET", path, owner.key, params={"asOf": _iso(created - timedelta(seconds=5))}), 404)
        later = api.call("GET", path, owner.key, params={"asOf": "9999-12-31T23:59:59Z"})
        assert later.status_code == 200 and later.json["balanceCents"] == 1700
        assert later.json["asOf"] < "9999"


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "yesterday", "1700000000",
                                   "2026-13-01T00:00:00Z", "9999-12-31T23:59:59-01:00", ""])
def test_unrepresentable_instants_are_refused(api, history, as_of):
    owner, ws, account, _ = history
    for path in (f"/billing-accounts/{account}/balance", f"/workspaces/{ws}/billing/balance"):
        body = assert_problem(api.call("GET", path, owner.key, params={"asOf": as_of}), 422)
        assert [e["field"] for e in body["errors"]] == ["asOf"]


def test_a_new_account_reads_zero_from_its_creation_and_others_cannot_read_it_at_any_instant(api, history):
    owner, ws, account, _ = history
    extra = new_linked_account(api, owner, ws)
    created = datetime.fromisoformat(extra["createdAt"]) + timedelta(milliseconds=1)  # shown to the millisecond
    found = api.call("GET", f"/billing-accounts/{extra['id']}/balance", owner.key, params={"asOf": _iso(created)}).json
    assert _view(found) == (0, 0, 0, 0, None)
    stranger = api.new_user("Eve")
    for path in (f"/billing-accounts/{account}/balance", f"/workspaces/{ws}/billing/balance"):
        assert_problem(api.call("GET", path, stranger.key, params={"asOf": "2030-01-01T00:00:00Z"}), 404)


def test_a_balance_below_zero_has_no_grants_and_a_credit_after_it_holds_only_what_is_above_zero(api, services):
    owner = api.new_user()
    account = owner.default_account_id
    post(services, account, -1300, kind="refund", allow_negative=True)
    assert _view(api.call("GET", f"/billing-accounts/{account}/balance", owner.key).json) == (-300, -300, 0, 0, None)
    post(services, account, 500, kind="stripe_topup", terms=PAID[GrantSource.STRIPE])
    assert _view(api.call("GET", f"/billing-accounts/{account}/balance", owner.key).json) == (200, 200, 200, 0, None)


def test_the_instant_is_found_by_the_ledger_index_not_by_summing_history(engine, history):
    """The plan of the as-of statement starts from one probe of ledger_entries_account_created, on an account with a
    history (planned in a transaction rolled back: its entries and the statistics ANALYZE takes of them are gone
    after; with the few entries of the other tests' accounts, reading them all and sorting may plan cheaper)."""
    _, _, account, _ = history
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(text("INSERT INTO ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents, "
                          "idempotency_key, created_at) SELECT :account, 'credit_grant', 1, g, 'history:' || g, "
                          "now() - interval '1 hour' + g * interval '1 ms' FROM generate_series(1, 3000) g"),
                     {"account": account})
        conn.execute(text("ANALYZE ledger_entries"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + balances._AS_OF.text),
                            {"account_id": account, "as_of": datetime.now(UTC)}).scalar()
        tx.rollback()
    found = json.dumps(plan)
    assert "ledger_entries_account_created" in found and '"Node Type": "Aggregate"' not in json.dumps(
        _last_cte(plan[0]["Plan"]))


def _last_cte(node: dict) -> dict:
    """The plan of the CTE `last`."""
    if node.get("Subplan Name") == "CTE last":
        return node
    for child in node.get("Plans", []):
        found = _last_cte(child)
        if found:
            return found
    return {}


def test_a_balance_read_now_is_one_statement(services, engine, history, monkeypatch):
    """Through SQLAlchemy (an account's balance) or prepared on the bare connection (a workspace's, whose
    statement also checks a user's key: domain.store.prepared)."""
    owner, ws, account, _ = history
    caller = services.users.authenticate(owner.key)
    sent = []

    def count(conn, cursor, statement, *args) -> None:
        sent.append(statement)
    bare_execute = psycopg.Connection.execute
    monkeypatch.setattr(psycopg.Connection, "execute",
                        lambda conn, query, *args, **kwargs: sent.append(query) or bare_execute(conn, query, *args,
                                                                                                 **kwargs))
    event.listen(engine, "before_cursor_execute", count)
    try:
        services.reads.balance(caller, account)
        services.reads.workspace_balance(caller, ws)
        services.reads.workspace_balance(KeyHolder(hash_key(owner.key)), ws)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(sent) == 3, sent
