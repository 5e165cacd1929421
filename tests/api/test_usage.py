"""Usage batches through the real app and the operation service, and the usage overview, on PostgreSQL."""
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import text

from api import responses
from domain.services.users import hash_key
from domain.store import usage as usage_store
from tests.api.checks import assert_problem, ledger_problems
from tests.factories import new_linked_account, post


@pytest.fixture
def world(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)


def ev(event_id: str, cents: int, metric: str = "tokens", quantity: int = 10, at: datetime | None = None) -> dict:
    body = {"eventId": event_id, "metric": metric, "quantity": quantity, "amountCents": cents}
    return body | ({"occurredAt": at.isoformat().replace("+00:00", "Z")} if at else {})


def record(api, services, ws: dict, events: list[dict], *, apply: bool = True, **headers) -> dict:
    """POST a batch (202), then apply its operation as the worker would; the operation."""
    posted = api.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json={"events": events}, headers=headers)
    assert posted.status_code == 202, posted.text
    assert posted.json["kind"] == "usage" and posted.headers["Location"] == f"/operations/{posted.json['id']}"
    if apply:
        services.operations.apply(posted.json["id"])
    return api.operator("GET", posted.headers["Location"]).json


def balance(api, owner, ws) -> int:
    return api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"]


def usage_entries(engine, workspace_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT reference, count(*) FROM ledger_entries WHERE kind = 'usage' "
                                      "AND workspace_id = :ws GROUP BY reference"), {"ws": workspace_id}).all())


def test_a_batch_debits_each_event_once_and_reports_every_outcome(api, services, world, queue):
    owner, ws = world
    op = record(api, services, ws, [ev("e1", 100), ev("e2", 200, "images", 2), ev("e3", 300)])
    assert ("tiers.recompute", {"account_id": ws["defaultBillingAccountId"]}) in queue.sent
    assert op["status"] == "succeeded", op
    result = op["result"]
    assert (result["debited"], result["duplicates"], result["refused"]) == (3, 0, 0)
    assert (result["debitedCents"], result["balanceAfterCents"]) == (600, 400)
    assert [(e["eventId"], e["status"]) for e in result["events"]] == [("e1", "debited"), ("e2", "debited"),
                                                                        ("e3", "debited")]
    assert balance(api, owner, ws) == 400
    newest = api.call("GET", f"/workspaces/{ws['id']}/billing/transactions", owner.key).json["data"]
    assert [(t["kind"], t["amountCents"], t["balanceAfterCents"], t["reference"]) for t in newest[:3]] == [
        ("usage", -300, 400, "e3"), ("usage", -200, 700, "e2"), ("usage", -100, 900, "e1")]
    assert newest[0]["id"] == result["events"][2]["transactionId"]
    summary = api.call("GET", f"/workspaces/{ws['id']}/billing/summary", owner.key).json
    assert summary["byKind"]["usage"] == {"count": 3, "amountCents": -600}
    assert ledger_problems(services, ws["defaultBillingAccountId"]) == []


def test_an_event_sent_again_after_the_default_account_changed_is_still_a_duplicate(api, services, world, engine):
    owner, ws = world
    first = record(api, services, ws, [ev("moved", 100)])
    other = new_linked_account(api, owner, ws["id"])["id"]
    post(services, other, 5000)
    made_default = api.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{other}/default", owner.key)
    assert made_default.status_code == 200, made_default.text
    again = record(api, services, ws, [ev("moved", 100), ev("new", 30)])
    assert [e["status"] for e in again["result"]["events"]] == ["duplicate", "debited"]
    assert again["result"]["events"][0]["transactionId"] == first["result"]["events"][0]["transactionId"]
    assert usage_entries(engine, ws["id"]) == {"moved": 1, "new": 1}


def test_a_resent_batch_and_one_event_in_two_batches_debit_once(api, services, world, engine):
    owner, ws = world
    first = record(api, services, ws, [ev("a", 10), ev("b", 20)])
    again = record(api, services, ws, [ev("a", 10), ev("b", 20)])
    overlapping = record(api, services, ws, [ev("b", 20), ev("c", 30), ev("c", 30), ev("a", 99)])
    assert first["result"]["debited"] == 2
    assert [e["status"] for e in again["result"]["events"]] == ["duplicate", "duplicate"]
    assert [e["transactionId"] for e in again["result"]["events"]] == [
        e["transactionId"] for e in first["result"]["events"]]
    outcomes = overlapping["result"]["events"]
    assert [e["status"] for e in outcomes] == ["duplicate", "debited", "duplicate", "duplicate"]
    assert "first stands" in outcomes[3]["reason"] and "first stands" not in outcomes[2]["reason"]
    assert usage_entries(engine, ws["id"]) == {"a": 1, "b": 1, "c": 1}
    assert balance(api, owner, ws) == 1000 - 60


def test_concurrent_batches_with_overlapping_events_debit_each_event_once(api, services, world, engine):
    owner, ws = world
    post(services, ws["defaultBillingAccountId"], 100_000)
    event_ids = [f"evt-{i}" for i in range(60)]
    batches = [random.Random(seed).sample(event_ids, 40) for seed in range(8)]
    ops = [record(api, services, ws, [ev(i, 7) for i in batch], apply=False)["id"] for batch in batches]
    start = threading.Barrier(len(ops))

    def apply(op_id):
        start.wait(timeout=10)
        services.operations.apply(op_id)
    with ThreadPoolExecutor(len(ops)) as pool:
        list(pool.map(apply, ops))

    results = [api.operator("GET", f"/operations/{op_id}").json for op_id in ops]
    assert {r["status"] for r in results} == {"succeeded"}
    debited = sorted(e["eventId"] for r in results for e in r["result"]["events"] if e["status"] == "debited")
    assert debited == sorted(set().union(*batches))
    assert set(usage_entries(engine, ws["id"]).values()) == {1}
    assert balance(api, owner, ws) == 101_000 - 7 * len(debited)
    assert ledger_problems(services, ws["defaultBillingAccountId"]) == []


def test_an_event_that_would_overdraw_is_refused_in_full_and_later_ones_that_fit_are_debited(api, services,
                                                                                              world, engine):
    owner, ws = world
    op = record(api, services, ws, [ev("big", 600), ev("too-big", 500), ev("rest", 400), ev("one-more", 1)])
    assert op["status"] == "succeeded"
    assert [(e["status"], e["transactionId"] is None) for e in op["result"]["events"]] == [
        ("debited", False), ("refused", True), ("debited", False), ("refused", True)]
    assert op["result"]["events"][1]["reason"].startswith("insufficient_funds")
    assert balance(api, owner, ws) == 0
    assert usage_entries(engine, ws["id"]) == {"big": 1, "rest": 1}
    post(services, ws["defaultBillingAccountId"], 500)  # a refused event is not in the ledger: resending it debits
    assert record(api, services, ws, [ev("too-big", 500)])["result"]["events"][0]["status"] == "debited"


def test_a_batch_of_1000_events_over_64_kib_is_accepted_with_or_without_an_idempotency_key(api, services, world):
    owner, ws = world
    post(services, ws["defaultBillingAccountId"], 10_000)
    events = [ev(f"large-batch-event-{i:06d}-{uuid.uuid4().hex}", 1, "tokens.input") for i in range(1000)]
    op = record(api, services, ws, events, **{"Idempotency-Key": str(uuid.uuid4())})
    assert op["result"]["debited"] == 1000
    assert record(api, services, ws, events)["result"]["duplicates"] == 1000
    assert balance(api, owner, ws) == 10_000


@pytest.mark.parametrize("events, field", [
    ([], "events"),
    ([ev(f"e{i}", 1) for i in range(1001)], "events"),
    ([ev("e", 0)], "events[0].amountCents"),
    ([ev("e", 1.5)], "events[0].amountCents"),
    ([ev("e", 100_000_001)], "events[0].amountCents"),
    ([ev("e", 1, quantity=-1)], "events[0].quantity"),
    ([ev("", 1)], "events[0].eventId"),
    ([ev("has space", 1)], "events[0].eventId"),
    ([ev("e", 1, metric="")], "events[0].metric"),
    ([ev("e", 1) | {"occurredAt": "yesterday"}], "events[0].occurredAt"),
    ([ev("e", 1) | {"occurredAt": 1700000000}], "events[0].occurredAt"),
    ([ev("e", 1) | {"occurredAt": "2026-01-01T00:00:00"}], "events[0].occurredAt"),
    ([ev("e", 1, at=datetime.now(UTC) + timedelta(hours=1))], "events[0].occurredAt"),
])
def test_an_invalid_batch_is_unprocessable_and_queues_nothing(api, world, queue, events, field):
    _, ws = world
    sent = len(queue.sent)
    body = assert_problem(api.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json={"events": events}), 422)
    assert field in [e["field"] for e in body["errors"]], body
    assert len(queue.sent) == sent


def test_only_the_operator_records_usage(api, world):
    owner, ws = world
    assert_problem(api.call("POST", f"/workspaces/{ws['id']}/billing/usage", owner.key,
                            json={"events": [ev("e", 1)]}), 403)
    assert_problem(api.operator("POST", f"/workspaces/ws_{'0' * 32}/billing/usage", json={"events": [ev("e", 1)]}),
                   404)


def _overview(api, key, ws, **params) -> dict:
    result = api.call("GET", f"/workspaces/{ws['id']}/billing/usage-overview", key, params=params)
    assert result.status_code == 200, result.text
    responses.UsageOverviewShape.model_validate(result.json)
    return result.json


def _z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_the_overview_fills_empty_periods_and_its_totals_equal_the_ledger_for_the_window(api, services, world,
                                                                                        engine):
    owner, ws = world
    post(services, ws["defaultBillingAccountId"], 50_000)
    day = (datetime.now(UTC) - timedelta(days=5)).replace(hour=0, minute=0, second=0, microsecond=0)
    record(api, services, ws, [
        ev("h0a", 100, "tokens", 1000, day + timedelta(minutes=5)),
        ev("h0b", 50, "images", 2, day + timedelta(minutes=59, seconds=59)),
        ev("h2", 70, "tokens", 700, day + timedelta(hours=2)),
        ev("d2", 300, "tokens", 3000, day + timedelta(days=2, hours=23)),
        ev("before", 999, "tokens", 1, day - timedelta(microseconds=1)),
        ev("after", 888, "tokens", 1, day + timedelta(days=3)),
    ])

    hourly = _overview(api, owner.key, ws, **{"from": _z(day), "to": _z(day + timedelta(hours=4)),
                                              "granularity": "hour"})
    starts = [_z(day + timedelta(hours=h))[:-1] + ".000Z" for h in range(4)]
    assert [(p["periodStart"], p["usageCents"], p["quantity"], p["events"]) for p in hourly["series"]] == [
        (starts[0], 150, 1002, 2), (starts[1], 0, 0, 0), (starts[2], 70, 700, 1), (starts[3], 0, 0, 0)]
    assert hourly["totalUsageCents"] == 220 and hourly["granularity"] == "hour"
    assert hourly["byMetric"] == [{"metric": "tokens", "quantity": 1700, "usageCents": 170},
                                  {"metric": "images", "quantity": 2, "usageCents": 50}]

    daily = _overview(api, owner.key, ws, **{"from": _z(day), "to": _z(day + timedelta(days=3))})
    assert [p["usageCents"] for p in daily["series"]] == [220, 0, 300]
    with engine.connect() as conn:
        ledger_total = conn.execute(text(
            "SELECT -sum(amount_cents) FROM ledger_entries WHERE kind = 'usage' AND workspace_id = :ws "
            "AND occurred_at >= :since AND occurred_at < :until"),
            {"ws": ws["id"], "since": day, "until": day + timedelta(days=3)}).scalar()
    assert daily["totalUsageCents"] == ledger_total == 520
    assert (daily["workspaceId"], daily["billingAccountId"]) == (ws["id"], ws["defaultBillingAccountId"])


def test_the_default_window_is_the_last_30_days_with_unaligned_edges_in_partial_periods(api, services, world):
    owner, ws = world
    record(api, services, ws, [ev("now", 5)])
    overview = _overview(api, owner.key, ws)
    since = datetime.fromisoformat(overview["from"])
    until = datetime.fromisoformat(overview["to"])
    assert until - since == timedelta(days=30) and overview["granularity"] == "day"
    assert len(overview["series"]) == 31 and overview["series"][-1]["usageCents"] == 5
    assert overview["series"][0]["periodStart"] <= overview["from"]
    unaligned = _overview(api, owner.key, ws, **{"from": "2026-01-01T10:30:00Z", "to": "2026-01-01T12:00:01Z",
                                                 "granularity": "hour"})
    assert [p["periodStart"] for p in unaligned["series"]] == [
        "2026-01-01T10:00:00.000Z", "2026-01-01T11:00:00.000Z", "2026-01-01T12:00:00.000Z"]


def test_an_unaligned_window_counts_exactly_the_events_inside_it(api, services, world, engine):
    owner, ws = world
    hour = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    at = {"early": hour + timedelta(minutes=10), "edge-in": hour + timedelta(minutes=45),
          "whole": hour + timedelta(hours=1, minutes=30), "late-in": hour + timedelta(hours=2, microseconds=500),
          "late-out": hour + timedelta(hours=2, seconds=2), "later": hour + timedelta(hours=5)}
    record(api, services, ws, [ev(name, 2 ** i, at=t) for i, (name, t) in enumerate(at.items())])
    windows = [(hour + timedelta(minutes=30), hour + timedelta(hours=2, seconds=1)),
               (hour + timedelta(minutes=44), hour + timedelta(minutes=46)),
               (hour, hour + timedelta(hours=6)),
               (hour + timedelta(hours=2, microseconds=500), hour + timedelta(hours=3))]
    for since, until in windows:
        for granularity in ("hour", "day"):
            found = _overview(api, owner.key, ws, **{"from": _z(since), "to": _z(until), "granularity": granularity})
            expected = sum(2 ** i for i, t in enumerate(at.values()) if since <= t < until)
            assert (found["totalUsageCents"], sum(p["events"] for p in found["series"])) == (
                expected, sum(1 for t in at.values() if since <= t < until)), (since, until, granularity)
    assert _overview(api, owner.key, ws, **{"from": _z(windows[0][0]), "to": _z(windows[0][1]),
                                            "granularity": "hour"})["totalUsageCents"] == 2 + 4 + 8


@pytest.mark.parametrize("params, field", [
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:01Z", "granularity": "hour"}, "from"),
    ({"from": "2024-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
    ({"granularity": "week"}, "granularity"),
    ({"from": "2026-01-01"}, "from"),
])
def test_an_overview_window_too_large_or_malformed_is_unprocessable(api, world, params, field):
    owner, ws = world
    body = assert_problem(api.call("GET", f"/workspaces/{ws['id']}/billing/usage-overview", owner.key,
                                   params=params), 422)
    assert field in [e["field"] for e in body["errors"]]


def test_members_read_the_overview_and_strangers_cannot_see_it(api, world):
    owner, ws = world
    member, stranger = api.new_user("Mem"), api.new_user("Eve")
    api.add_member(owner, ws["id"], member)
    assert api.call("GET", f"/workspaces/{ws['id']}/billing/usage-overview", member.key).status_code == 200
    assert_problem(api.call("GET", f"/workspaces/{ws['id']}/billing/usage-overview", stranger.key), 404)


# In this connection only: the workspace's 20,000 usage entries of the last 30 days (temporary tables shadow the
# real ones), with their hourly rollups and statistics, so that an edge's default share of the ledger weighs.
_SHADOW_LEDGER = """
CREATE TEMP TABLE ledger_entries (LIKE ledger_entries INCLUDING ALL);
CREATE TEMP TABLE usage_rollups (LIKE usage_rollups INCLUDING ALL);
INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents,
                            idempotency_key, metric, quantity, occurred_at)
SELECT %(account)s, %(workspace)s, 'usage', -1, 0, 'k' || g, 'tokens', 10, now() - interval '30 days' * g / 20000.0
FROM generate_series(1, 20000) g;
INSERT INTO usage_rollups (billing_account_id, workspace_id, hour, metric, usage_cents, quantity, events)
SELECT billing_account_id, workspace_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       metric, -SUM(amount_cents), SUM(quantity), COUNT(*)
FROM ledger_entries GROUP BY 1, 2, 3, 4;
ANALYZE ledger_entries;
ANALYZE usage_rollups
"""


def test_the_overview_is_one_statement_that_postgresql_keeps_on_its_generic_plan(world, database_url):
    """Planned with the window's values, an edge of a few entries looks cheaper than the generic plan's default
    share of the ledger, and PostgreSQL would plan the overview again on every execution; the statement hides
    those values from the planner, so after the five custom plans it tries first on a connection, PostgreSQL
    keeps the generic plan, whatever the window."""
    owner, ws = world
    until = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in _SHADOW_LEDGER.split(";"):
            conn.execute(statement, {"account": ws["defaultBillingAccountId"], "workspace": ws["id"]})
        for n in range(9):
            since = until - timedelta(days=n + 1, minutes=17)
            found, series, metrics = usage_store.overview(conn, ws["id"], since, until, "hour",
                                                          key_hash=hash_key(owner.key))
            events = conn.execute("SELECT COUNT(*) FROM ledger_entries WHERE occurred_at >= %s AND occurred_at < %s",
                                  (since, until)).fetchone()[0]
            assert (found.role, sum(p[3] for p in series), metrics) == ("owner", events, [("tokens", 10 * events,
                                                                                            events)])
        assert conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                            "WHERE statement LIKE '%%may_read%%'").fetchall() == [(4, 5)]
