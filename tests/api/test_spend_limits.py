"""Monthly spend limits: an event or a hold landing exactly on the limit is accepted, one past it refused; holds
count while they reserve, captures once applied; each alert step crossed is recorded once."""
import uuid
from datetime import UTC, datetime

import pytest

from domain.names import Task
from tests.api.checks import assert_problem, ledger_problems
from tests.factories import post


def _apply(services, queue) -> None:
    for name, kwargs in list(queue.sent):
        if name == Task.APPLY_OPERATION:
            services.operations.apply(kwargs["operation_id"])
    queue.sent.clear()


def _usage(api, services, queue, ws: str, *cents: int) -> list[tuple[str, str]]:
    events = [{"eventId": uuid.uuid4().hex, "metric": "tokens", "quantity": 1, "amountCents": c} for c in cents]
    op = api.operator("POST", f"/workspaces/{ws}/billing/usage", json={"events": events}).json
    _apply(services, queue)
    result = api.operator("GET", f"/operations/{op['id']}").json["result"]
    return [(e["status"], e.get("reason", "").split(":")[0]) for e in result["events"]]


@pytest.fixture
def limited(api, services):
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    post(services, owner.default_account_id, 5000)  # money is not what stops them here
    put = api.call("PUT", f"/workspaces/{ws}/billing/spend-limit", owner.key, json={"monthlyLimitCents": 500})
    assert put.status_code == 200, put.text
    return owner, ws


def test_the_event_that_lands_exactly_on_the_limit_is_debited_and_the_next_one_refused(api, services, queue, limited):
    owner, ws = limited
    assert _usage(api, services, queue, ws, 300) == [("debited", "")]
    assert _usage(api, services, queue, ws, 200, 1) == [("debited", ""), ("refused", "spend_limit")]
    found = api.call("GET", f"/workspaces/{ws}/billing/spend-limit", owner.key).json
    now = datetime.now(UTC)
    assert (found["monthlyLimitCents"], found["spentCents"], found["reservedCents"]) == (500, 500, 0)
    assert found["periodStart"] == f"{now:%Y-%m}-01T00:00:00.000Z" and found["periodEnd"] > found["periodStart"]
    assert [(a["percent"], a["spentCents"]) for a in found["alerts"]] == [(50, 300), (80, 500), (100, 500)]
    assert ledger_problems(services, owner.default_account_id) == []


def test_holds_count_against_the_limit_while_they_reserve_and_captures_once_applied(api, services, queue, limited):
    owner, ws = limited
    holds = f"/workspaces/{ws}/billing/holds"
    hold = api.operator("POST", holds, json={"amountCents": 400})
    assert hold.status_code == 201
    refused = assert_problem(api.operator("POST", holds, json={"amountCents": 101}), 402)
    assert refused["type"].endswith("/spend-limit")
    assert api.operator("POST", holds, json={"amountCents": 100}).status_code == 201  # exactly on the limit
    assert _usage(api, services, queue, ws, 1) == [("refused", "spend_limit")]
    api.operator("POST", f"{holds}/{hold.json['id']}/capture", json={"amountCents": 250})
    _apply(services, queue)
    found = api.call("GET", f"/workspaces/{ws}/billing/spend-limit", owner.key).json
    assert (found["spentCents"], found["reservedCents"]) == (250, 100)
    assert [a["percent"] for a in found["alerts"]] == [50]
    assert _usage(api, services, queue, ws, 150, 1) == [("debited", ""), ("refused", "spend_limit")]


def test_lifting_the_limit_lets_spending_through(api, services, queue, limited):
    owner, ws = limited
    assert _usage(api, services, queue, ws, 600) == [("refused", "spend_limit")]
    lifted = api.call("PUT", f"/workspaces/{ws}/billing/spend-limit", owner.key, json={"monthlyLimitCents": None})
    assert lifted.json["monthlyLimitCents"] is None and lifted.json["alertPercents"] == [50, 80, 100]
    assert _usage(api, services, queue, ws, 600) == [("debited", "")]


def test_only_managers_set_it_and_members_read_it(api, limited):
    owner, ws = limited
    member = api.new_user("Mem")
    api.add_member(owner, ws, member)
    path = f"/workspaces/{ws}/billing/spend-limit"
    assert_problem(api.call("PUT", path, member.key, json={"monthlyLimitCents": 1}), 403)
    assert_problem(api.operator("PUT", path, json={"monthlyLimitCents": 1}), 403)
    assert api.call("GET", path, member.key).json["monthlyLimitCents"] == 500
    for body in ({}, {"monthlyLimitCents": -1}, {"monthlyLimitCents": 1.5}, {"monthlyLimitCents": 5, "alertPercents": [0]},
                 {"monthlyLimitCents": 5, "alertPercents": [101]}, {"monthlyLimitCents": "5"}):
        assert_problem(api.call("PUT", path, owner.key, json=body), 422)
    custom = api.call("PUT", path, owner.key, json={"monthlyLimitCents": 1000, "alertPercents": [90, 25, 90]}).json
    assert custom["alertPercents"] == [25, 90]
