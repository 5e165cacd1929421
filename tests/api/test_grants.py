"""Credit grants: each credit opens one, debits draw from them in the contract's order, a refund from its own
payment's grant first, and what is left at expiresAt is debited once as `expiry`."""
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from domain.grants import PAID
from domain.models import OPERATOR_CALLER
from domain.names import GrantSource, Task
from domain.services import grants
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store import balances, ledger
from domain.store.uow import UnitOfWork
from tests.api.checks import assert_problem, ledger_problems
from tests.factories import post


def _apply_queued(services, queue) -> None:
    for name, kwargs in list(queue.sent):
        if name == Task.APPLY_OPERATION:
            services.operations.apply(kwargs["operation_id"])
    queue.sent.clear()


def _credit(api, services, queue, ws: str, cents: int, **terms) -> None:
    result = api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": cents, **terms})
    assert result.status_code == 202, result.text
    _apply_queued(services, queue)


def _usage(api, services, queue, ws: str, cents: int) -> dict:
    event = {"eventId": uuid.uuid4().hex, "metric": "tokens", "quantity": 1, "amountCents": cents}
    result = api.operator("POST", f"/workspaces/{ws}/billing/usage", json={"events": [event]})
    assert result.status_code == 202, result.text
    _apply_queued(services, queue)
    return api.operator("GET", f"/operations/{result.json['id']}").json["result"]


def _in(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _remaining(api, user, ws: str) -> dict[tuple[int, int, str | None], tuple[int, str]]:
    """(amount, priority, expiresAt) -> (remaining, status) of every grant of the workspace's account."""
    page = api.call("GET", f"/workspaces/{ws}/billing/grants", user.key, params={"limit": "200"}).json
    return {(g["amountCents"], g["priority"], g["expiresAt"] and g["expiresAt"][:10]): (g["remainingCents"], g["status"])
            for g in page["data"]}


@pytest.fixture
def owner_ws(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)["id"]


def test_debits_draw_lower_priorities_first_then_earlier_expiries_then_older_grants(api, services, queue, owner_ws):
    owner, ws = owner_ws  # the intro credit: 1000, priority 50, no expiry, the oldest
    _credit(api, services, queue, ws, 300, priority=10)
    _credit(api, services, queue, ws, 400, expiresAt=_in(2))
    _credit(api, services, queue, ws, 200, expiresAt=_in(1))
    _credit(api, services, queue, ws, 500, category="paid", priority=90)
    two, one = _in(2)[:10], _in(1)[:10]

    assert _usage(api, services, queue, ws, 800)["debited"] == 1
    assert _remaining(api, owner, ws) == {(1000, 50, None): (1000, "active"), (300, 10, None): (0, "depleted"),
                                          (400, 50, two): (100, "active"), (200, 50, one): (0, "depleted"),
                                          (500, 90, None): (500, "active")}
    assert _usage(api, services, queue, ws, 900)["debited"] == 1
    assert _remaining(api, owner, ws)[(400, 50, two)] == (0, "depleted")
    assert _remaining(api, owner, ws)[(1000, 50, None)] == (200, "active")
    assert _usage(api, services, queue, ws, 600)["debited"] == 1  # the paid grant, priority 90, last
    assert _remaining(api, owner, ws)[(1000, 50, None)] == (0, "depleted")
    assert _remaining(api, owner, ws)[(500, 90, None)] == (100, "active")
    assert ledger_problems(services, owner.default_account_id) == []


def test_a_refund_draws_from_its_own_payments_grant_first(api, services, owner_ws):
    owner, _ = owner_ws
    account = owner.default_account_id
    with services.ctx.uow() as uow:
        grants.credit(uow.conn, account, 2000, PAID[GrantSource.STRIPE], kind="stripe_topup",
                      key="stripe_checkout:chk_refunded" + uuid.uuid4().hex)
        key = uow.conn.execute(text("SELECT idempotency_key FROM ledger_entries WHERE billing_account_id = :a "
                                    "AND kind = 'stripe_topup'"), {"a": account}).scalar()
        grants.debit(uow.conn, account, -700, kind="refund", key=f"refund:{key}", first_key=key)
        uow.commit()
    found = {g["source"]: g["remainingCents"] for g in api.call(
        "GET", f"/billing-accounts/{account}/grants", owner.key).json["data"]}
    assert found == {"intro": 1000, "stripe": 1300}  # the older intro grant would come first otherwise
    assert ledger_problems(services, account) == []


def test_a_credit_on_a_negative_balance_pays_it_off_before_its_grant_holds_anything(api, services, owner_ws):
    owner, _ = owner_ws
    account = owner.default_account_id
    post(services, account, -1500, kind="refund", allow_negative=True)  # 1000 of grants, 500 below zero
    post(services, account, 300)
    post(services, account, 700)
    found = [(g["amountCents"], g["remainingCents"], g["status"]) for g in api.call(
        "GET", f"/billing-accounts/{account}/grants", owner.key).json["data"]]
    assert found == [(700, 500, "active"), (300, 0, "depleted"), (1000, 0, "depleted")]
    assert ledger_problems(services, account) == []


def _expire_now(engine, account: str) -> None:
    """As if the clock had passed the expiresAt of the account's grants that have one."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE grants SET expires_at = now() - interval '1 second' "
                          "WHERE billing_account_id = :a AND expires_at IS NOT NULL"), {"a": account})


def test_a_debit_draws_its_grant_in_place(engine, owner_ws):
    """Drawing changes no indexed column of the grant (migration 0015): a heap-only update, no index entry written;
    and the balance's split by category still reads what the grant holds."""
    owner, ws = owner_ws
    account = owner.default_account_id
    # the backend's counts not yet sent to the statistics include its earlier transactions': the difference counts
    counts = text("SELECT pg_stat_get_xact_tuples_updated('grants'::regclass), "
                  "pg_stat_get_xact_tuples_hot_updated('grants'::regclass)")
    with engine.connect() as conn:
        ledger.lock_account(conn, account)
        posted = ledger.post_many(conn, [ledger.NewEntry(account, -300, f"hot-{uuid.uuid4().hex}", workspace_id=ws)],
                                  kind="usage")
        before = conn.execute(counts).one()
        grants.draw_each(conn, list(posted.values()))
        after = conn.execute(counts).one()
        split = balances.of_account(conn, account).grants
        conn.rollback()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert (split.promotional_cents, split.paid_cents) == (700, 0)


def test_what_is_left_of_a_grant_at_its_expiry_is_debited_once(api, services, queue, engine, owner_ws):
    owner, ws = owner_ws
    account = owner.default_account_id
    _credit(api, services, queue, ws, 500, expiresAt=_in(1), priority=10)
    _usage(api, services, queue, ws, 200)  # from the expiring grant: priority 10
    _expire_now(engine, account)
    services.grants.expire_due()
    services.grants.expire_due()  # a second run, or a redelivered message, finds nothing due
    page = api.call("GET", f"/billing-accounts/{account}/transactions", owner.key).json["data"]
    assert [(t["kind"], t["amountCents"], t["balanceAfterCents"]) for t in page[:2]] == [
        ("expiry", -300, 1000), ("usage", -200, 1300)]
    assert [(g["status"], g["remainingCents"]) for g in api.call(
        "GET", f"/billing-accounts/{account}/grants", owner.key, params={"status": "expired"}).json["data"]] == [
        ("expired", 0)]
    assert ("tiers.recompute", {"account_id": account}) in queue.sent
    assert ledger_problems(services, account) == []


def test_a_grant_spent_before_its_expiry_expires_nothing(api, services, queue, engine, owner_ws):
    owner, ws = owner_ws
    _credit(api, services, queue, ws, 100, expiresAt=_in(1), priority=0)
    _usage(api, services, queue, ws, 100)
    _expire_now(engine, owner.default_account_id)
    services.grants.expire_due()
    kinds = [t["kind"] for t in api.call("GET", f"/workspaces/{ws}/billing/transactions", owner.key).json["data"]]
    assert "expiry" not in kinds


def test_the_intro_credit_expires_after_the_configured_days(engine):
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=lambda *a, **k: True,
                                config=Config(intro_credit_ttl_days=30)))
    user, _ = services.users.create(OPERATOR_CALLER, f"ttl-{uuid.uuid4().hex}@example.com", None)
    [grant] = services.grants.account_page(OPERATOR_CALLER, user.default_billing_account_id, limit=10).items
    assert (grant.source, grant.category, grant.amount_cents) == ("intro", "promotional", 1000)
    assert timedelta(days=29) < grant.expires_at - datetime.now(UTC) <= timedelta(days=30)


@pytest.mark.parametrize("terms, field", [
    ({"expiresAt": "2001-01-01T00:00:00Z"}, "expiresAt"), ({"priority": 101}, "priority"),
    ({"priority": -1}, "priority"), ({"priority": "5"}, "priority"), ({"category": "gift"}, "category"),
    ({"expiresAt": "tomorrow"}, "expiresAt")])
def test_credit_terms_out_of_range_are_refused(api, owner_ws, terms, field):
    _, ws = owner_ws
    body = assert_problem(api.operator("POST", f"/workspaces/{ws}/billing/credits",
                                       json={"amountCents": 100, **terms}), 422)
    assert [e["field"] for e in body["errors"]] == [field]


def test_grant_pages_follow_cursors_and_filter_by_status(api, services, queue, owner_ws):
    owner, ws = owner_ws
    for cents in (1, 2, 3, 4):
        _credit(api, services, queue, ws, cents)
    _usage(api, services, queue, ws, 1000)  # the intro grant, the oldest of priority 50 and no expiry
    seen, params = [], {"limit": "2"}
    while True:
        page = api.call("GET", f"/workspaces/{ws}/billing/grants", owner.key, params=params).json
        seen += [g["amountCents"] for g in page["data"]]
        if page["nextCursor"] is None:
            break
        params = {"limit": "2", "cursor": page["nextCursor"]}
    assert seen == [4, 3, 2, 1, 1000]
    depleted = api.call("GET", f"/workspaces/{ws}/billing/grants", owner.key, params={"status": "depleted"}).json
    assert [g["amountCents"] for g in depleted["data"]] == [1000]
    assert_problem(api.call("GET", f"/workspaces/{ws}/billing/grants", owner.key, params={"status": "gone"}), 422)
    assert_problem(api.call("GET", f"/workspaces/{ws}/billing/grants", owner.key, params={"cursor": "not-a-cursor"}),
                   422)
