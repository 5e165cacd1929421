"""The webhook outbox: events are written in the transaction of the change that causes them, only for workspaces
with an endpoint subscribed, and a transaction that rolls back writes none."""
import uuid

import pytest
from sqlalchemy import text

from domain.store import webhook_events
from tests.factories import post


def _endpoint(engine, ws: str, events: list[str]) -> str:
    endpoint_id = f"wh_{uuid.uuid4().hex}"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret, created_by) "
                          "VALUES (:id, :ws, 'https://hooks.example/in', :events, 'whsec_dGVzdA==', 'test')"),
                     {"id": endpoint_id, "ws": ws, "events": events})
    return endpoint_id


def _events(engine, ws: str) -> list[tuple[str, dict]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT type, data FROM webhook_events WHERE workspace_id = :ws ORDER BY created_at"), {"ws": ws})]


def _deliveries(engine, endpoint_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = :e"),
                            {"e": endpoint_id}).scalar()


@pytest.fixture
def owner_ws(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)["id"]


def test_an_emitted_event_is_written_with_a_delivery_for_each_subscribed_endpoint(services, engine, owner_ws):
    _, ws = owner_ws
    first, second = (_endpoint(engine, ws, ["checkout.completed"]) for _ in range(2))
    other = _endpoint(engine, ws, ["checkout.failed"])
    with services.ctx.uow() as uow:
        webhook_events.emit(uow.conn, workspace_id=ws, type="checkout.completed", data={"id": "chk_1"})
        uow.commit()
    assert _events(engine, ws) == [("checkout.completed", {"id": "chk_1"})]
    assert (_deliveries(engine, first), _deliveries(engine, second), _deliveries(engine, other)) == (1, 1, 0)


def test_a_transaction_that_rolls_back_writes_no_event(services, engine, owner_ws):
    _, ws = owner_ws
    _endpoint(engine, ws, ["checkout.completed"])
    with pytest.raises(RuntimeError):
        with services.ctx.uow() as uow:
            webhook_events.emit(uow.conn, workspace_id=ws, type="checkout.completed", data={"id": "chk_1"})
            raise RuntimeError("the change failed")
    with services.ctx.uow() as uow:  # the same pooled connection keeps nothing of the one rolled back
        uow.commit()
    assert _events(engine, ws) == []


def test_a_workspace_without_a_subscribed_endpoint_gets_no_event_row(services, engine, owner_ws):
    owner, ws = owner_ws
    _endpoint(engine, ws, ["checkout.failed"])
    post(services, owner.default_account_id, 500)
    with services.ctx.uow() as uow:
        webhook_events.emit(uow.conn, workspace_id=ws, type="checkout.completed", data={})
        uow.commit()
    assert _events(engine, ws) == []


def test_each_posting_is_a_transaction_created_event_of_every_workspace_whose_default_account_it_moved(
        api, services, engine, owner_ws):
    owner, ws = owner_ws
    second = api.new_workspace(owner, "Second")["id"]
    _endpoint(engine, ws, ["transaction.created"])
    _endpoint(engine, second, ["transaction.created"])
    post(services, owner.default_account_id, 700)
    for workspace in (ws, second):
        [(kind, data)] = _events(engine, workspace)
        assert kind == "transaction.created" and data == {}


def test_balance_low_and_depleted_are_emitted_on_downward_crossings_only(api, services, engine, owner_ws):
    owner, ws = owner_ws  # 1000 cents of intro credit
    _endpoint(engine, ws, ["balance.low", "balance.depleted"])
    assert api.call("PUT", f"/workspaces/{ws}/billing/settings", owner.key,
                    json={"lowBalanceCents": 500}).status_code == 200
    for cents in (-400, -100, -100, 300, -200, -200, 400, -800, -100):
        post(services, owner.default_account_id, cents, allow_negative=True)
    # 1000 -> 600 -> 500 -> 400 (low) -> 700 -> 500 -> 300 (low) -> 700 -> -100 (low, depleted) -> -200
    found = [(kind, data["previousBalanceCents"], data["balanceCents"]) for kind, data in _events(engine, ws)]
    assert found == [("balance.low", 500, 400), ("balance.low", 500, 300), ("balance.low", 700, -100),
                     ("balance.depleted", 700, -100)]
    assert all(data["lowBalanceCents"] == 500 for kind, data in _events(engine, ws) if kind == "balance.low")
