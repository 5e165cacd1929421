"""Holds: reserved at once or refused (402), captured through a queued operation exactly once, released, expired;
what they reserve lowers availableCents for usage and new holds, also when many arrive at the same moment."""
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import text

from domain.models import OPERATOR_CALLER
from domain.ids import new_id
from domain.names import Task
from domain.services.holds import CAPTURE
from domain.store import holds as holds_sql
from tests.api.checks import assert_problem, ledger_problems
from tests.processes import entries_per_operation, statuses


def _hold(api, ws: str, cents: int, **more):
    return api.operator("POST", f"/workspaces/{ws}/billing/holds", json={"amountCents": cents, **more})


def _apply(services, queue) -> list[str]:
    applied = [kw["operation_id"] for name, kw in queue.sent if name == Task.APPLY_OPERATION]
    for operation_id in applied:
        services.operations.apply(operation_id)
    queue.sent.clear()
    return applied


def _balance(api, owner, ws: str, **params) -> dict:
    return api.call("GET", f"/workspaces/{ws}/billing/balance", owner.key, params=params or None).json


def _held(engine, account: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT held_cents FROM billing_accounts WHERE id = :a"), {"a": account}).scalar()


@pytest.fixture
def owner_ws(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)["id"]


def test_a_hold_lowers_what_is_available_and_moves_no_money(api, services, owner_ws):
    owner, ws = owner_ws
    created = _hold(api, ws, 300, description="agent run", reference="run-1", expiresInSeconds=600)
    assert created.status_code == 201, created.text
    hold = created.json
    assert (hold["status"], hold["amountCents"], hold["capturedCents"], hold["reference"], hold["settledAt"]) == (
        "active", 300, 0, "run-1", None)
    assert hold["billingAccountId"] == owner.default_account_id and hold["workspaceId"] == ws
    assert timedelta(seconds=590) < datetime.fromisoformat(hold["expiresAt"]) - datetime.now(UTC) <= timedelta(
        seconds=600)
    balance = _balance(api, owner, ws)
    assert (balance["balanceCents"], balance["availableCents"]) == (1000, 700)
    assert api.call("GET", f"/workspaces/{ws}/billing/holds/{hold['id']}", owner.key).json == hold
    assert [h["id"] for h in api.call("GET", f"/workspaces/{ws}/billing/holds", owner.key).json["data"]] == [hold["id"]]
    assert ledger_problems(services, owner.default_account_id) == []


def test_a_hold_beyond_what_is_available_is_refused_with_402_and_writes_nothing(api, engine, owner_ws):
    owner, ws = owner_ws
    assert _hold(api, ws, 600).status_code == 201
    refused = assert_problem(_hold(api, ws, 401), 402)
    assert refused["type"].endswith("/insufficient-funds") and "400" in refused["detail"]
    assert _held(engine, owner.default_account_id) == 600
    assert len(api.call("GET", f"/workspaces/{ws}/billing/holds", owner.key).json["data"]) == 1
    assert _hold(api, ws, 400).status_code == 201  # exactly what is left


def test_fifty_concurrent_holds_against_a_balance_that_fits_ten_reserve_exactly_ten(api, services, engine, owner_ws):
    owner, ws = owner_ws
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: _hold(api, ws, 100).status_code, range(50)))
    assert sorted(answers) == [201] * 10 + [402] * 40
    assert _held(engine, owner.default_account_id) == 1000
    assert (_balance(api, owner, ws)["balanceCents"], _balance(api, owner, ws)["availableCents"]) == (1000, 0)
    assert ledger_problems(services, owner.default_account_id) == []


def test_a_capture_debits_once_and_releases_the_rest(api, services, queue, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 300, reference="run-7").json
    captured = api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold['id']}/capture", json={"amountCents": 120})
    assert captured.status_code == 202 and captured.headers["Location"] == f"/operations/{captured.json['id']}"
    assert _balance(api, owner, ws)["availableCents"] == 700  # reserved until the capture is applied
    assert _apply(services, queue) == [captured.json["id"]]
    services.operations.apply(captured.json["id"])  # a redelivery changes nothing
    result = api.operator("GET", f"/operations/{captured.json['id']}").json
    assert result["status"] == "succeeded" and result["result"]["capturedCents"] == 120
    assert result["result"]["releasedCents"] == 180 and result["result"]["balanceAfterCents"] == 880
    after = api.call("GET", f"/workspaces/{ws}/billing/holds/{hold['id']}", owner.key).json
    assert (after["status"], after["capturedCents"], after["settledAt"] is not None) == ("captured", 120, True)
    balance = _balance(api, owner, ws)
    assert (balance["balanceCents"], balance["availableCents"]) == (880, 880)
    usage = [t for t in api.call("GET", f"/workspaces/{ws}/billing/transactions", owner.key).json["data"]
             if t["kind"] == "usage"]
    assert [(t["amountCents"], t["reference"], t["id"]) for t in usage] == [
        (-120, "run-7", result["result"]["transactionId"])]
    assert ledger_problems(services, owner.default_account_id) == []


def test_capturing_twice_answers_the_same_operation(api, services, queue, owner_ws):
    _, ws = owner_ws
    hold = _hold(api, ws, 300).json
    path = f"/workspaces/{ws}/billing/holds/{hold['id']}/capture"
    first = api.operator("POST", path, json={"amountCents": 100})
    again = api.operator("POST", path, json={"amountCents": 100})
    other = api.operator("POST", path, json={"amountCents": 50}, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json["id"] == again.json["id"] == other.json["id"]
    _apply(services, queue)
    assert api.operator("POST", path, json={"amountCents": 100}).json["id"] == first.json["id"]


def test_an_accepted_capture_updates_its_hold_in_place_and_the_expiry_job_passes_it_over(api, services, queue, engine,
                                                                                          owner_ws):
    """Queuing a capture changes no indexed column of the hold (migration 0013): a heap-only update, no index entry
    written. A hold whose capture is queued still reserves until it is applied, past its expiresAt too."""
    owner, ws = owner_ws
    hold = _hold(api, ws, 300).json
    driver = engine.raw_connection()
    try:
        op = holds_sql.queue_capture(driver.driver_connection, ws, hold["id"], 120, operation_id=new_id("op"),
                                     kind=CAPTURE, caller=OPERATOR_CALLER.name, trace_parent=None)
        hot = driver.driver_connection.execute(
            "SELECT pg_stat_get_xact_tuples_updated('holds'::regclass), "
            "pg_stat_get_xact_tuples_hot_updated('holds'::regclass)").fetchone()
        driver.commit()
    finally:
        driver.close()
    assert op is not None and tuple(hot) == (1, 1)
    with engine.begin() as conn:
        conn.execute(text("UPDATE holds SET expires_at = now() WHERE id = :id"), {"id": hold["id"]})
    services.holds.expire_due()
    assert _held(engine, owner.default_account_id) == 300
    services.operations.apply(op.id)
    found = api.call("GET", f"/workspaces/{ws}/billing/holds/{hold['id']}", owner.key).json
    assert (found["status"], found["capturedCents"], _held(engine, owner.default_account_id)) == ("captured", 120, 0)
    assert _balance(api, owner, ws)["balanceCents"] == 880
    assert ledger_problems(services, owner.default_account_id) == []


def test_capturing_more_than_held_is_422_and_changes_nothing(api, engine, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 300).json
    body = assert_problem(api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold['id']}/capture",
                                       json={"amountCents": 301}), 422)
    assert [e["field"] for e in body["errors"]] == ["amountCents"]
    assert api.call("GET", f"/workspaces/{ws}/billing/holds/{hold['id']}", owner.key).json["status"] == "active"
    assert _held(engine, owner.default_account_id) == 300


def test_release_after_capture_is_409_and_capture_after_release_is_409(api, services, queue, engine, owner_ws):
    owner, ws = owner_ws
    captured, released = _hold(api, ws, 100).json, _hold(api, ws, 200).json
    base = f"/workspaces/{ws}/billing/holds"
    assert api.operator("POST", f"{base}/{captured['id']}/capture", json={"amountCents": 100}).status_code == 202
    assert_problem(api.operator("POST", f"{base}/{captured['id']}/release"), 409)
    _apply(services, queue)
    assert_problem(api.operator("POST", f"{base}/{captured['id']}/release"), 409)
    first = api.operator("POST", f"{base}/{released['id']}/release")
    assert first.status_code == 200 and first.json["status"] == "released" and first.json["settledAt"]
    assert api.operator("POST", f"{base}/{released['id']}/release").json == first.json  # answered as it is
    assert_problem(api.operator("POST", f"{base}/{released['id']}/capture", json={"amountCents": 1}), 409)
    assert _held(engine, owner.default_account_id) == 0
    assert _balance(api, owner, ws)["availableCents"] == 900
    assert ledger_problems(services, owner.default_account_id) == []


def test_capturing_zero_releases_the_hold_and_debits_nothing(api, services, queue, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 250).json
    op = api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold['id']}/capture", json={"amountCents": 0}).json
    _apply(services, queue)
    assert api.operator("GET", f"/operations/{op['id']}").json["result"]["transactionId"] is None
    found = api.call("GET", f"/workspaces/{ws}/billing/holds/{hold['id']}", owner.key).json
    assert (found["status"], found["capturedCents"]) == ("released", 0)
    assert (_balance(api, owner, ws)["balanceCents"], _balance(api, owner, ws)["availableCents"]) == (1000, 1000)


def test_an_expired_hold_stops_reserving_and_cannot_be_captured(api, services, engine, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 400).json
    with engine.begin() as conn:
        conn.execute(text("UPDATE holds SET expires_at = now() WHERE id = :id"), {"id": hold["id"]})
    path = f"/workspaces/{ws}/billing/holds/{hold['id']}/capture"
    assert_problem(api.operator("POST", path, json={"amountCents": 1}), 409)  # past expiresAt, before the job
    assert services.holds.expire_due() >= 1
    services.holds.expire_due()
    found = api.call("GET", f"/workspaces/{ws}/billing/holds", owner.key, params={"status": "expired"}).json["data"]
    assert [h["id"] for h in found] == [hold["id"]]
    assert _balance(api, owner, ws)["availableCents"] == 1000
    assert_problem(api.operator("POST", path, json={"amountCents": 1}), 409)
    assert ledger_problems(services, owner.default_account_id) == []


def test_usage_sees_what_holds_reserve(api, services, queue, owner_ws):
    owner, ws = owner_ws
    assert _hold(api, ws, 900).status_code == 201
    events = [{"eventId": "big", "metric": "tokens", "quantity": 1, "amountCents": 200},
              {"eventId": "small", "metric": "tokens", "quantity": 1, "amountCents": 100}]
    op = api.operator("POST", f"/workspaces/{ws}/billing/usage", json={"events": events}).json
    _apply(services, queue)
    result = api.operator("GET", f"/operations/{op['id']}").json["result"]
    assert [(e["status"], e.get("reason", "")[:18]) for e in result["events"]] == [
        ("refused", "insufficient_funds"), ("debited", "")]
    assert _balance(api, owner, ws)["availableCents"] == 0


def test_a_capture_is_debited_even_when_an_expired_grant_took_the_balance_below_it(api, services, queue, engine,
                                                                                   owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 800).json
    with engine.begin() as conn:  # the intro grant expires under the hold
        conn.execute(text("UPDATE grants SET expires_at = now() WHERE billing_account_id = :a"),
                     {"a": owner.default_account_id})
    services.grants.expire_due()
    assert _balance(api, owner, ws)["availableCents"] == -800
    api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold['id']}/capture", json={"amountCents": 500})
    _apply(services, queue)
    assert (_balance(api, owner, ws)["balanceCents"], _balance(api, owner, ws)["availableCents"]) == (-500, -500)
    assert ledger_problems(services, owner.default_account_id) == []


def test_a_hold_under_an_idempotency_key_is_made_once(api, engine, owner_ws):
    owner, ws = owner_ws
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = api.operator("POST", f"/workspaces/{ws}/billing/holds", json={"amountCents": 100}, headers=key)
    again = api.operator("POST", f"/workspaces/{ws}/billing/holds", json={"amountCents": 100}, headers=key)
    assert first.status_code == again.status_code == 201 and first.json == again.json
    assert again.headers["idempotent-replayed"] == "true" and _held(engine, owner.default_account_id) == 100


def test_available_as_of_an_instant_counts_the_holds_that_reserved_then(api, engine, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 300).json
    api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold['id']}/release")
    with engine.connect() as conn:
        created, settled = conn.execute(text("SELECT created_at, settled_at FROM holds WHERE id = :id"),
                                        {"id": hold["id"]}).one()
    at = lambda instant: _balance(api, owner, ws, asOf=instant.astimezone(UTC).isoformat())["availableCents"]  # noqa
    assert [at(created - timedelta(microseconds=1)), at(created), at(settled - timedelta(microseconds=1)),
            at(settled)] == [1000, 700, 700, 1000]


def test_users_may_read_holds_but_not_place_them(api, owner_ws):
    owner, ws = owner_ws
    assert_problem(api.call("POST", f"/workspaces/{ws}/billing/holds", owner.key, json={"amountCents": 1}), 403)
    assert_problem(api.call("GET", f"/workspaces/{ws}/billing/holds/hold_{'0' * 32}", owner.key), 404)
    assert_problem(api.call("GET", f"/workspaces/{ws}/billing/holds", owner.key, params={"status": "open"}), 422)


def test_a_hold_on_an_account_another_transaction_holds_answers_503_naming_the_lock(database_url, engine, queue):
    """A hold waits at most lock_timeout for the account's row; then 503 with Retry-After, saying the account is
    locked (the database is up), and nothing is reserved. Once the lock goes, the same hold is placed."""
    from falcon import testing

    from api.app import create_app
    from domain.services.context import Config, Context
    from domain.services.registry import Services
    from domain.store.uow import UnitOfWork, make_engine
    from tests.factories import OPERATOR_TOKEN, Api
    from tests.processes import account_locked

    bounded = make_engine(database_url, lock_timeout_ms=200)
    services = Services(Context(uow=lambda: UnitOfWork(bounded), enqueue=queue, config=Config()))
    api = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {})))
    owner = api.new_user()
    ws = api.new_workspace(owner)
    try:
        with account_locked(engine, ws["defaultBillingAccountId"]):
            refused = _hold(api, ws["id"], 200)
        assert_problem(refused, 503)
        assert refused.json["detail"] == "the billing account is locked by another transaction; retry shortly"
        assert refused.headers.get("Retry-After")
        assert _held(engine, ws["defaultBillingAccountId"]) == 0
        assert _hold(api, ws["id"], 200).status_code == 201
    finally:
        bounded.dispose()


def test_one_message_applies_queued_captures_with_the_credits_and_stores_their_tiers(api, services, queue, engine):
    owners = [api.new_user() for _ in range(3)]
    spaces = [api.new_workspace(owner)["id"] for owner in owners]
    holds = [(ws, _hold(api, ws, 200).json["id"]) for ws in spaces for _ in range(2)]
    queue.sent.clear()
    ops = [api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold}/capture", json={"amountCents": 50}).json["id"]
           for ws, hold in holds]
    credit = services.operations.request_credit(OPERATOR_CALLER, spaces[0], 25, "with the captures").id

    services.operations.apply(ops[0])  # one message: the batch takes the other captures and the credit along
    assert statuses(engine, [*ops, credit]) == {i: "succeeded" for i in [*ops, credit]}
    assert entries_per_operation(engine, ops) == {i: 0 for i in ops}  # a capture's entry is keyed by its hold
    for owner, ws in zip(owners, spaces):
        assert (_balance(api, owner, ws)["balanceCents"], _held(engine, owner.default_account_id)) == (
            1000 - 100 + (25 if ws == spaces[0] else 0), 0)
        assert ledger_problems(services, owner.default_account_id) == []
    with engine.connect() as conn:
        current = conn.execute(text(
            "SELECT count(*) FROM account_tiers t WHERE t.billing_account_id = ANY(:a) AND t.as_of_entry_id = "
            "(SELECT max(id) FROM ledger_entries e WHERE e.billing_account_id = t.billing_account_id)"),
            {"a": [o.default_account_id for o in owners]}).scalar()
    assert current == 3  # the tiers were computed with the captures
    for operation_id in ops:  # each capture's own message comes later and changes nothing
        services.operations.apply(operation_id)
    assert _balance(api, owners[1], spaces[1])["balanceCents"] == 900


def test_a_capture_whose_workspace_another_transaction_holds_waits_for_it_and_is_applied_once(api, services, queue,
                                                                                             engine, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 300).json
    other_ws = api.new_workspace(api.new_user())["id"]
    other = _hold(api, other_ws, 100).json
    op = api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold['id']}/capture", json={"amountCents": 300}).json
    other_op = api.operator("POST", f"/workspaces/{other_ws}/billing/holds/{other['id']}/capture",
                            json={"amountCents": 100}).json
    with engine.connect() as blocker:  # a usage batch of the workspace, say, in its transaction
        blocker.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('usage:' || CAST(:w AS text), 0))"),
                        {"w": ws})
        done = ThreadPoolExecutor(1).submit(services.operations.apply, other_op["id"])
        done.result(timeout=30)  # the batch passes the held workspace over; the other capture is applied
        assert statuses(engine, [op["id"], other_op["id"]]) == {op["id"]: "queued", other_op["id"]: "succeeded"}
        blocker.rollback()
    services.operations.apply(op["id"])
    assert statuses(engine, [op["id"]]) == {op["id"]: "succeeded"}
    assert _balance(api, owner, ws)["balanceCents"] == 700
    assert ledger_problems(services, owner.default_account_id) == []


def test_ten_concurrent_captures_of_one_hold_queue_one_operation(api, services, queue, owner_ws):
    owner, ws = owner_ws
    hold = _hold(api, ws, 400).json
    path = f"/workspaces/{ws}/billing/holds/{hold['id']}/capture"
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: api.operator("POST", path, json={"amountCents": 100 + n}), range(10)))
    assert {a.status_code for a in answers} == {202} and len({a.json["id"] for a in answers}) == 1
    _apply(services, queue)
    captured = answers[0].json["result"] or api.operator("GET", f"/operations/{answers[0].json['id']}").json["result"]
    assert _balance(api, owner, ws)["balanceCents"] == 1000 - captured["capturedCents"]
    assert ledger_problems(services, owner.default_account_id) == []


def test_captures_of_one_account_in_one_batch_draw_the_grants_one_after_another(api, services, queue, engine, owner_ws):
    owner, ws = owner_ws  # the intro grant: 1000, priority 50
    api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 300, "priority": 10})
    _apply(services, queue)
    holds = [_hold(api, ws, cents).json["id"] for cents in (200, 200, 500)]
    ops = [api.operator("POST", f"/workspaces/{ws}/billing/holds/{hold}/capture",
                        json={"amountCents": cents}).json["id"] for hold, cents in zip(holds, (200, 200, 500))]
    services.operations.apply(ops[0])  # one batch takes the three
    assert statuses(engine, ops) == {i: "succeeded" for i in ops}
    with engine.connect() as conn:
        draws = conn.execute(text("""
            SELECT e.idempotency_key, g.priority, d.amount_cents, d.remaining_after_cents
            FROM grant_draws d JOIN grants g ON g.billing_account_id = d.billing_account_id AND g.id = d.grant_id
            JOIN ledger_entries e ON e.id = d.entry_id WHERE d.billing_account_id = :a ORDER BY d.entry_id, g.priority
        """), {"a": owner.default_account_id}).all()
        closed_by = conn.execute(text("SELECT e.idempotency_key FROM grants g JOIN ledger_entries e ON e.id = "
                                      "g.closed_entry_id WHERE g.billing_account_id = :a AND g.priority = 10"),
                                 {"a": owner.default_account_id}).scalar()
    # each capture draws where the one before it left off: the priority-10 grant first, then the intro grant
    assert [tuple(d) for d in draws] == [(f"hold:{holds[0]}", 10, 200, 100), (f"hold:{holds[1]}", 10, 100, 0),
                                         (f"hold:{holds[1]}", 50, 100, 900), (f"hold:{holds[2]}", 50, 500, 400)]
    assert closed_by == f"hold:{holds[1]}"
    assert _balance(api, owner, ws)["balanceCents"] == 400
    assert ledger_problems(services, owner.default_account_id) == []


def test_a_hold_creation_is_planned_once_however_many_holds_a_workspace_keeps(api, database_url, owner_ws):
    """PostgreSQL keeps one plan for a prepared statement (a generic plan) only while that plan's estimated cost
    stays near a planned-per-call one's. The creation's statement for a workspace without a spend limit must not
    carry the limit's sum over a workspace's unsettled holds: costed even where it is skipped, that sum grows with
    the holds table until every creation is planned anew."""
    owner, ws = owner_ws
    busy = api.new_user("Busy")
    busy_ws = api.new_workspace(busy)["id"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        with conn.transaction():  # 20,000 unsettled holds on one workspace, its account's held_cents with them
            conn.execute("INSERT INTO holds (billing_account_id, id, workspace_id, amount_cents, expires_at, "
                         "created_by) SELECT %(account)s, 'hold_' || lpad(to_hex(n), 32, '0'), %(ws)s, 1, "
                         "now() + interval '1 hour', 'operator' FROM generate_series(1, 20000) n",
                         {"account": busy.default_account_id, "ws": busy_ws})
            conn.execute("UPDATE billing_accounts SET held_cents = held_cents + 20000 WHERE id = %s",
                         (busy.default_account_id,))
        conn.execute("ANALYZE holds")
        try:
            for _ in range(8):
                hold = holds_sql.reserve(conn, hold_id=new_id("hold"), workspace_id=ws, amount_cents=10, seconds=600,
                                         description="", reference=None, created_by="operator", scope=None,
                                         limited=False)
                assert hold is not None and hold.workspace_id == ws
            generic, custom = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                                           "WHERE statement LIKE '%INSERT INTO holds%'").fetchone()
        finally:
            conn.execute("UPDATE holds SET settled_at = now(), status = 'released' WHERE workspace_id = ANY(%s) "
                         "AND settled_at IS NULL", ([ws, busy_ws],))
            conn.execute("UPDATE billing_accounts SET held_cents = 0 WHERE id = ANY(%s)",
                         ([owner.default_account_id, busy.default_account_id],))
    assert (generic, custom) == (3, 5)  # PostgreSQL plans the first five calls for their values, then keeps one
