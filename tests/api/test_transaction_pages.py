"""Keyset pages of transactions: complete and stable while entries are written; filters; bad parameters."""
import base64
import re
import threading

import pytest
from sqlalchemy import text

from tests.api.checks import all_transactions, assert_problem
from tests.factories import new_linked_account, post


@pytest.fixture
def fresh_account(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    return owner, ws, new_linked_account(api, owner, ws["id"])["id"]


def database_now(engine) -> str:
    with engine.connect() as conn:
        moment = conn.execute(text("SELECT clock_timestamp() AT TIME ZONE 'UTC'")).scalar()
    return moment.isoformat() + "Z"


def entry_number(services, transaction: dict) -> int:
    return services.ctx.ids.entry_of(transaction["id"])


class Writer(threading.Thread):
    """Posts one new entry each time it is nudged, so that every page is read between two writes."""

    def __init__(self, services, account_id: str) -> None:
        super().__init__(daemon=True)
        self.services, self.account_id, self.posted = services, account_id, []
        self.nudges, self.writes, self.finished = threading.Semaphore(0), threading.Semaphore(0), False

    def run(self) -> None:
        while self.nudges.acquire() and not self.finished:
            self.posted.append(self.services.ctx.ids.transaction(post(self.services, self.account_id, 1).entry.id))
            self.writes.release()

    def write_one(self) -> None:
        self.nudges.release()
        assert self.writes.acquire(timeout=10)

    def finish(self) -> None:
        self.finished = True
        self.nudges.release()
        self.join(timeout=10)


def test_walking_the_pages_returns_every_entry_once_newest_first_while_entries_are_written(
        api, services, fresh_account):
    owner, _, account_id = fresh_account
    for i in range(120):
        post(services, account_id, 100 + i)
    existing = [t["id"] for t in all_transactions(api, owner.key, account_id)]
    writer = Writer(services, account_id)
    writer.start()
    walked, pages, params = [], 0, {"limit": "7"}
    try:
        while True:
            result = api.call("GET", f"/billing-accounts/{account_id}/transactions", owner.key, params=params)
            assert result.status_code == 200, result.text
            walked += result.json["data"]
            pages += 1
            writer.write_one()
            if result.json["nextCursor"] is None:
                break
            params = {"limit": "7", "cursor": result.json["nextCursor"]}
    finally:
        writer.finish()
    assert pages == 18 and len(writer.posted) == 18
    assert [t["id"] for t in walked] == existing
    assert [entry_number(services, t) for t in walked] == sorted((entry_number(services, t) for t in walked), reverse=True)
    assert [t["amountCents"] for t in walked] == list(range(219, 99, -1))
    now = [t["id"] for t in all_transactions(api, owner.key, account_id)]
    assert now == list(reversed(writer.posted)) + existing


def test_the_workspace_route_pages_the_same_way_and_the_last_page_has_no_cursor(api, services, fresh_account):
    """The same entries, every field alike, as the account's own route (each renders its page its own way)."""
    owner, ws, account_id = fresh_account
    for i in range(5):
        post(services, account_id, 10 + i)
    path = f"/workspaces/{ws['id']}/billing/transactions"
    first = api.call("GET", path, owner.key, params={"billingAccountId": account_id, "limit": "3"}).json
    second = api.call("GET", path, owner.key,
                      params={"billingAccountId": account_id, "limit": "3", "cursor": first["nextCursor"]}).json
    assert [t["amountCents"] for t in first["data"]] == [14, 13, 12] and first["nextCursor"]
    assert [t["amountCents"] for t in second["data"]] == [11, 10] and second["nextCursor"] is None
    assert first["data"] + second["data"] == all_transactions(api, owner.key, account_id)[:5]
    by_account = api.call("GET", f"/billing-accounts/{account_id}/transactions", owner.key, params={"limit": "3"}).json
    assert by_account == first


def test_kind_from_and_to_filter_transactions_and_summaries(api, services, engine, fresh_account):
    owner, _, account_id = fresh_account
    for amount, kind in [(500, "credit_grant"), (-20, "usage"), (300, "credit_grant"), (-30, "usage"),
                         (7, "adjustment")]:
        post(services, account_id, amount, kind=kind)
    middle = database_now(engine)
    post(services, account_id, 40, kind="credit_grant")
    post(services, account_id, -5, kind="usage")
    base = f"/billing-accounts/{account_id}"

    def amounts(**params) -> list[int]:
        result = api.call("GET", f"{base}/transactions", owner.key, params=params)
        assert result.status_code == 200, result.text
        return [t["amountCents"] for t in result.json["data"]]

    assert amounts(kind="usage") == [-5, -30, -20]
    assert amounts(kind="refund") == []
    assert amounts(**{"from": middle}) == [-5, 40]
    assert amounts(to=middle) == [7, -30, 300, -20, 500]
    assert amounts(kind="credit_grant", to=middle) == [300, 500]
    first = api.call("GET", f"{base}/transactions", owner.key, params={"kind": "credit_grant", "limit": "1"}).json
    assert amounts(kind="credit_grant", limit="1", cursor=first["nextCursor"]) == [300]
    later = api.call("GET", f"{base}/summary", owner.key, params={"from": middle}).json
    assert (later["transactionCount"], later["totalCreditedCents"], later["totalDebitedCents"]) == (2, 40, 5)
    assert later["balanceCents"] == 792
    earlier = api.call("GET", f"{base}/summary", owner.key, params={"to": middle}).json
    assert (earlier["transactionCount"], earlier["totalCreditedCents"], earlier["totalDebitedCents"]) == (5, 807, 50)


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("params", [
    {"cursor": "not a cursor!"}, {"cursor": _cursor("x:10")}, {"cursor": _cursor("e:-1")}, {"cursor": _cursor("e:0")},
    {"cursor": _cursor("e:" + "9" * 30)}, {"cursor": "x" * 201},
    {"limit": "0"}, {"limit": "201"}, {"limit": "abc"}, {"limit": "-1"}, {"limit": "1.5"},
    {"kind": "gift"}, {"from": "yesterday"}, {"from": "2026-01-01T00:00:00"},
    {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
])
def test_invalid_page_parameters_are_unprocessable(api, fresh_account, params):
    owner, ws, account_id = fresh_account
    for path in (f"/billing-accounts/{account_id}/transactions", f"/workspaces/{ws['id']}/billing/transactions"):
        body = assert_problem(api.call("GET", path, owner.key, params=params), 422)
        assert {e["field"] for e in body["errors"]} <= set(params), body


def test_limits_at_the_edges_are_accepted(api, fresh_account):
    owner, _, account_id = fresh_account
    for limit in ("1", "200"):
        result = api.call("GET", f"/billing-accounts/{account_id}/transactions", owner.key, params={"limit": limit})
        assert result.status_code == 200, result.text


def test_transaction_ids_and_cursors_tell_nothing_of_the_ledger_size_or_order(api, services, engine):
    """Two users' first entries, written one after the other, get ids that neither count nor reveal
    their neighbours; cursors carry no entry number; a key of another deployment maps them elsewhere."""
    from domain.public_ids import PublicIds

    firsts = []
    for _ in range(2):
        owner = api.new_user()
        firsts.append((owner, api.call("GET", f"/billing-accounts/{owner.default_account_id}/transactions",
                                       owner.key).json["data"][0]["id"]))
    (a_owner, a), (_, b) = firsts
    numbers = [services.ctx.ids.entry_of(t) for t in (a, b)]
    assert numbers[1] > numbers[0] and all(re.fullmatch(r"txn_[a-z2-7]{13}", t) for t in (a, b))
    assert not any(str(n) in t for n in numbers for t in (a, b))
    assert PublicIds(lambda: b"another deployment's key").transaction(numbers[0]) != a
    for _ in range(3):
        post(services, a_owner.default_account_id, 1)
    page = api.call("GET", f"/billing-accounts/{a_owner.default_account_id}/transactions", a_owner.key,
                    params={"limit": "2"}).json
    assert page["nextCursor"] and not any(str(services.ctx.ids.entry_of(t["id"])) in page["nextCursor"]
                                          for t in page["data"])
    with engine.connect() as conn:
        key = conn.execute(text("SELECT key FROM service_keys WHERE name = 'public_ids'")).scalar_one()
    assert len(key) == 32
