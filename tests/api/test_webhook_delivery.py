"""One delivery attempt at a time, in the test process, against a real receiver on loopback: the payload and its
signature, the retry schedule and its end, endpoints disabled after 5 days of failures, a name that resolves to a
private address by the time of the attempt, grant.expiring once per grant, and a threshold crossed and re-crossed
by 1,000 concurrent debits."""
import random
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from domain.grants import Terms
from domain.names import Task
from domain.providers.webhook_sender import WebhookSender
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from domain.webhooks import ATTEMPTS
from tests.conftest import RecordingQueue
from tests.factories import OPERATOR_TOKEN, Api, post
from tests.standins.webhook_receiver import Answer, WebhookReceiver, self_signed

CONFIG = Config(webhooks_allow_private=True, webhook_retry_scale=0.001, webhook_timeout_seconds=1.0)


@pytest.fixture
def hooks(engine):
    queue = RecordingQueue()
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=CONFIG))
    return services, Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {"database": lambda: None}))), queue


def _subscribed(api, url: str, events: list[str]):
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    created = api.call("POST", f"/workspaces/{ws}/webhook-endpoints", owner.key, json={"url": url, "events": events})
    assert created.status_code == 201, created.text
    return owner, ws, created.json


def _deliveries(engine, endpoint_id: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(
            "SELECT * FROM webhook_deliveries WHERE endpoint_id = :e ORDER BY created_at"),
            {"e": endpoint_id}).mappings()]


def _deliver_all(services, engine, endpoint_id: str) -> list:
    """One attempt of each pending delivery of the endpoint, due now."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE endpoint_id = :e "
                          "AND status = 'pending'"), {"e": endpoint_id})
    return [services.webhook_delivery.deliver(d["id"]) for d in _deliveries(engine, endpoint_id)
            if d["status"] == "pending"]


def test_a_transaction_is_delivered_as_the_api_shows_it_signed_with_the_endpoints_secret(hooks, engine, receiver):
    services, api, _ = hooks
    owner, ws, endpoint = _subscribed(api, receiver.url, ["transaction.created"])
    post(services, owner.default_account_id, 250)
    [delivered] = _deliver_all(services, engine, endpoint["id"])
    assert delivered.succeeded
    [request] = receiver.received()
    payload = request.verified(endpoint["secret"])
    newest = api.call("GET", f"/workspaces/{ws}/billing/transactions", owner.key).json["data"][0]
    assert payload["data"] == newest and newest["amountCents"] == 250
    assert (payload["type"], payload["workspaceId"], payload["id"]) == ("transaction.created", ws, request.webhook_id)
    assert payload["id"].startswith("evt_") and payload["createdAt"].endswith("Z")
    assert not request.verifies("whsec_" + "QUJDREVGR0hJSktMTU5PUA==")  # another secret does not verify it
    [row] = _deliveries(engine, endpoint["id"])
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("succeeded", 1, 200)


def test_every_retry_sends_the_same_body_under_the_same_webhook_id_until_the_schedule_ends(hooks, engine, receiver):
    services, api, _ = hooks
    owner, ws, endpoint = _subscribed(api, receiver.url, ["transaction.created"])
    receiver.answer(Answer(500), Answer(503), Answer(500))
    post(services, owner.default_account_id, 100)
    outcomes = [_deliver_all(services, engine, endpoint["id"])[0] for _ in range(4)]
    assert [o.succeeded for o in outcomes] == [False, False, False, True]
    assert [o.retry_in for o in outcomes[:3]] == [pytest.approx(0.005), pytest.approx(0.3), pytest.approx(1.8)]
    requests = receiver.received()
    assert len({r.webhook_id for r in requests}) == 1 and len({r.body for r in requests}) == 1
    assert all(r.verifies(endpoint["secret"]) for r in requests)

    receiver.answer(*[Answer(500)] * ATTEMPTS)
    post(services, owner.default_account_id, 100)
    for _ in range(ATTEMPTS):
        _deliver_all(services, engine, endpoint["id"])
    last = _deliveries(engine, endpoint["id"])[-1]
    assert (last["status"], last["attempts"], last["last_status_code"], last["last_error"]) == (
        "failed", ATTEMPTS, 500, "answered 500")
    assert _deliver_all(services, engine, endpoint["id"]) == []  # nothing pending: no further attempt


def test_a_receiver_slower_than_the_timeout_fails_the_attempt(hooks, engine, receiver):
    services, api, _ = hooks
    owner, ws, endpoint = _subscribed(api, receiver.url, ["transaction.created"])
    receiver.answer(Answer(200, delay=2.5))
    post(services, owner.default_account_id, 100)
    [outcome] = _deliver_all(services, engine, endpoint["id"])
    assert not outcome.succeeded and outcome.seconds < 2.5
    assert _deliveries(engine, endpoint["id"])[0]["last_error"] == "no answer within 1 s"


def test_an_endpoint_failing_every_attempt_for_5_days_is_disabled_and_a_retry_by_hand_enables_it(
        hooks, engine, receiver):
    services, api, queue = hooks
    owner, ws, endpoint = _subscribed(api, receiver.url, ["transaction.created"])
    receiver.stop()
    post(services, owner.default_account_id, 100)
    post(services, owner.default_account_id, 100)
    _deliver_all(services, engine, endpoint["id"])
    window = timedelta(days=5) * CONFIG.webhook_retry_scale  # 432 s at this scale
    with engine.begin() as conn:
        conn.execute(text("UPDATE webhook_endpoints SET failing_since = failing_since - make_interval(secs => :s) "
                          "WHERE id = :e"), {"s": window.total_seconds(), "e": endpoint["id"]})
    _deliver_all(services, engine, endpoint["id"])
    shown = api.call("GET", f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}", owner.key).json
    assert shown["enabled"] is False
    assert [d["status"] for d in _deliveries(engine, endpoint["id"])] == ["failed", "failed"]
    post(services, owner.default_account_id, 100)  # a disabled endpoint gets no new event
    assert len(_deliveries(engine, endpoint["id"])) == 2

    receiver.start()
    first = _deliveries(engine, endpoint["id"])[0]["id"]
    path = f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}/deliveries/{first}/retry"
    assert api.call("POST", path, owner.key).status_code == 202
    assert queue.sent[-1] == (Task.DELIVER_WEBHOOK, {"delivery_id": first})
    assert services.webhook_delivery.deliver(first).succeeded
    assert api.call("GET", f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}", owner.key).json["enabled"] is True


def test_a_name_that_resolves_to_a_private_address_by_the_time_of_the_attempt_is_not_called(engine, receiver):
    """The DNS answer changes after the endpoint was created: the attempt resolves the name again, refuses the
    loopback address (where the receiver listens) and records why; the receiver is never called."""
    answers = {"address": "1.1.1.1"}

    def resolve(host, port, type=0, **_):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers["address"], port))]
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=RecordingQueue(), config=CONFIG,
                                webhooks=WebhookSender(resolve=resolve, timeout_seconds=1)))
    api = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {"database": lambda: None})))
    owner, ws, endpoint = _subscribed(api, f"https://rebinding.example:{receiver.port}/hooks", ["transaction.created"])
    answers["address"] = "127.0.0.1"
    post(services, owner.default_account_id, 100)
    [outcome] = _deliver_all(services, engine, endpoint["id"])
    assert not outcome.succeeded and receiver.received() == []
    assert _deliveries(engine, endpoint["id"])[0]["last_error"] == "refused: 127.0.0.1 is not a public address"


def test_grant_expiring_is_emitted_once_per_grant_seven_days_ahead(hooks, engine, receiver):
    services, api, _ = hooks
    owner, ws, endpoint = _subscribed(api, receiver.url, ["grant.expiring"])
    soon, later = datetime.now(UTC) + timedelta(days=6), datetime.now(UTC) + timedelta(days=8)
    post(services, owner.default_account_id, 300, terms=Terms("operator", expires_at=soon))
    post(services, owner.default_account_id, 400, terms=Terms("operator", expires_at=later))
    services.webhook_delivery.notice_expiring_grants()
    services.webhook_delivery.notice_expiring_grants()
    _deliver_all(services, engine, endpoint["id"])
    [request] = receiver.received()
    grant = request.verified(endpoint["secret"])["data"]
    assert (grant["amountCents"], grant["status"]) == (300, "active")
    assert grant["billingAccountId"] == owner.default_account_id
    assert grant["expiresAt"].startswith(soon.strftime("%Y-%m-%dT%H:%M"))


def test_a_thousand_concurrent_debits_give_one_balance_low_per_downward_crossing(hooks, engine):
    """Debits each given back at once, from four threads around the threshold: the ledger's chain says where each
    downward crossing was, and exactly those are the events (no upward crossing, no repeat, no miss)."""
    services, api, _ = hooks
    owner, ws, endpoint = _subscribed(api, "https://1.1.1.1/hooks", ["balance.low"])
    settings = api.call("PUT", f"/workspaces/{ws}/billing/settings", owner.key, json={"lowBalanceCents": 1000})
    assert settings.status_code == 200
    account = owner.default_account_id  # 1000 cents of intro credit: at the threshold, not below it
    rng = random.Random(17)

    def run(debits: list[int]) -> None:  # each debit given back at once: the balance hovers at the threshold
        for cents in debits:
            post(services, account, -cents, key=f"cross:{uuid.uuid4().hex}", allow_negative=True)
            post(services, account, cents, key=f"back:{uuid.uuid4().hex}")
    threads = [threading.Thread(target=run, args=([rng.choice([10, 20, 30]) for _ in range(250)],)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as conn:
        crossings = conn.execute(text(
            "SELECT id FROM ledger_entries WHERE billing_account_id = :a AND amount_cents < 0 "
            "AND balance_after_cents - amount_cents >= 1000 AND balance_after_cents < 1000 ORDER BY id"),
            {"a": account}).scalars().all()
        events = conn.execute(text("SELECT entry_id FROM webhook_events WHERE workspace_id = :w "
                                   "AND type = 'balance.low' ORDER BY entry_id"), {"w": ws}).scalars().all()
    assert len(crossings) > 20 and events == crossings


def test_an_endpoint_deleted_during_an_attempt_gets_no_retry(hooks, engine, receiver):
    services, api, _ = hooks
    owner, ws, endpoint = _subscribed(api, receiver.url, ["transaction.created"])
    held = threading.Event()
    receiver.answer(Answer(500, hold=held))
    post(services, owner.default_account_id, 100)
    [delivery] = _deliveries(engine, endpoint["id"])
    attempt = threading.Thread(target=lambda: outcomes.append(services.webhook_delivery.deliver(delivery["id"])))
    outcomes: list = []
    attempt.start()
    receiver.wait_for(1)
    assert api.call("DELETE", f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}", owner.key).status_code == 204
    held.set()
    attempt.join()
    assert outcomes[0].retry_in is None
    [row] = _deliveries(engine, endpoint["id"])
    assert (row["status"], row["next_attempt_at"], row["attempts"]) == ("failed", None, 1)


def test_https_goes_to_the_checked_address_and_verifies_the_certificate_of_the_name(engine, tmp_path):
    """The connection is made to the address the attempt checked, but TLS is spoken with the URL's name (SNI
    and the certificate's name): a certificate for another name fails the attempt."""
    cert, key = self_signed(tmp_path, "hooks.customer.test")

    def resolve(host, port, type=0, **_):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    sender = WebhookSender(allow_private=True, resolve=resolve, ca_certs=cert, timeout_seconds=2)
    with WebhookReceiver(tls=(cert, key)) as receiver:
        good = sender.send(f"https://hooks.customer.test:{receiver.port}/in", msg_id="evt_1", body=b"{}",
                           secret="whsec_dGVzdA==")
        wrong = sender.send(f"https://other.customer.test:{receiver.port}/in", msg_id="evt_2", body=b"{}",
                            secret="whsec_dGVzdA==")
        assert (good.status_code, good.error) == (200, None)
        assert wrong.status_code is None and "doesn't match 'hooks.customer.test'" in wrong.error
        assert [r.webhook_id for r in receiver.received()] == ["evt_1"]
        assert receiver.received()[0].headers["host"] == f"hooks.customer.test:{receiver.port}"
