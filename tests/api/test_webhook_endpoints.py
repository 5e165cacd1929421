"""Webhook endpoints through the API: the secret shown once, lists and pages, deletion, the deliveries page and a
manual retry, and the addresses refused at creation (also a name that resolves to one)."""
import socket

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from domain.names import Task
from domain.providers.webhook_sender import WebhookSender
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.api.checks import assert_problem
from tests.factories import OPERATOR_TOKEN, Api, post

PUBLIC = "https://1.1.1.1/hooks"


def _resolving_to(address: str):
    """A resolver that answers `address` for every name (the machine's own resolver reaches no DNS here)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def resolve(host, port, type=0, **_):
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
    return resolve


def _api(engine, queue, resolve=socket.getaddrinfo) -> Api:
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(),
                                webhooks=WebhookSender(resolve=resolve)))
    return Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {"database": lambda: None})))


@pytest.fixture
def owned(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)["id"]


def _create(api, owner, ws, **body):
    return api.call("POST", f"/workspaces/{ws}/webhook-endpoints", owner.key,
                    json={"url": PUBLIC, "events": ["balance.low"]} | body)


def test_the_secret_is_in_the_creation_answer_only(api, owned):
    owner, ws = owned
    created = _create(api, owner, ws, events=["transaction.created", "balance.low", "balance.low"], description="ops")
    assert created.status_code == 201, created.text
    body = created.json
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 30
    assert (body["url"], body["events"], body["description"], body["enabled"]) == (
        PUBLIC, ["balance.low", "transaction.created"], "ops", True)
    shown = api.call("GET", f"/workspaces/{ws}/webhook-endpoints/{body['id']}", owner.key).json
    assert shown == {k: v for k, v in body.items() if k != "secret"}
    listed = api.call("GET", f"/workspaces/{ws}/webhook-endpoints", owner.key).json
    assert listed == {"data": [shown], "nextCursor": None}


def test_endpoints_are_listed_newest_first_a_page_at_a_time(api, owned):
    owner, ws = owned
    made = [_create(api, owner, ws).json["id"] for _ in range(3)]
    first = api.call("GET", f"/workspaces/{ws}/webhook-endpoints", owner.key, params={"limit": "2"}).json
    rest = api.call("GET", f"/workspaces/{ws}/webhook-endpoints", owner.key,
                    params={"limit": "2", "cursor": first["nextCursor"]}).json
    assert [e["id"] for e in first["data"] + rest["data"]] == made[::-1] and rest["nextCursor"] is None


def test_a_deleted_endpoint_is_gone_and_its_pending_deliveries_fail(api, services, engine, owned):
    owner, ws = owned
    endpoint = _create(api, owner, ws, events=["transaction.created"]).json
    post(services, owner.default_account_id, 100)
    assert api.call("DELETE", f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}", owner.key).status_code == 204
    assert_problem(api.call("GET", f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}", owner.key), 404)
    assert_problem(api.call("DELETE", f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}", owner.key), 404)
    assert api.call("GET", f"/workspaces/{ws}/webhook-endpoints", owner.key).json["data"] == []
    post(services, owner.default_account_id, 100)  # no event for it any more
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT status, last_error FROM webhook_deliveries WHERE endpoint_id = :e"),
                                {"e": endpoint["id"]}).all()
    assert statuses == [("failed", "the endpoint was deleted")]


def test_the_deliveries_page_shows_each_delivery_and_a_retry_queues_its_attempt(api, services, queue, owned):
    owner, ws = owned
    endpoint = _create(api, owner, ws, events=["transaction.created"]).json
    post(services, owner.default_account_id, 100)
    path = f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}/deliveries"
    [delivery] = api.call("GET", path, owner.key).json["data"]
    assert delivery["eventId"].startswith("evt_") and delivery["id"].startswith("dlv_")
    assert {k: delivery[k] for k in ("type", "status", "attempts", "lastStatusCode", "lastError")} == {
        "type": "transaction.created", "status": "pending", "attempts": 0, "lastStatusCode": None, "lastError": None}
    retried = api.call("POST", f"{path}/{delivery['id']}/retry", owner.key)
    assert retried.status_code == 202 and retried.json["id"] == delivery["id"]
    assert queue.sent[-1] == (Task.DELIVER_WEBHOOK, {"delivery_id": delivery["id"]})
    assert_problem(api.call("POST", f"{path}/dlv_{'0' * 32}/retry", owner.key), 404)


def test_a_member_may_not_see_or_manage_endpoints(api, owned):
    owner, ws = owned
    member = api.new_user("Member")
    api.add_member(owner, ws, member)
    assert_problem(api.call("GET", f"/workspaces/{ws}/webhook-endpoints", member.key), 403)
    assert_problem(_create(api, member, ws), 403)


@pytest.mark.parametrize("url", [
    "http://1.1.1.1/hooks", "ftp://1.1.1.1/", "https://127.0.0.1/hooks", "https://[::1]/hooks",
    "https://10.0.0.8/hooks", "https://172.16.5.4/", "https://192.168.1.1/", "https://169.254.169.254/latest",
    "https://[fe80::1]/", "https://[fd00::1]/", "https://[::ffff:127.0.0.1]/", "https://[::ffff:10.0.0.1]/",
    "https://0.0.0.0/", "https://[::]/", "https://100.64.0.1/", "https://[64:ff9b::a00:1]/",
    "https://[2002:a00:1::]/", "https://user:pw@1.1.1.1/", "https://224.0.0.1/", "https://192.0.2.10/"])
def test_an_address_that_is_not_public_https_is_refused_at_creation(api, owned, url):
    owner, ws = owned
    body = assert_problem(_create(api, owner, ws, url=url), 422)
    assert body["errors"][0]["field"] == "url"


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::ffff:192.168.0.1", "fe80::1"])
def test_a_name_that_resolves_to_an_address_that_is_not_public_is_refused_at_creation(engine, queue, address):
    api = _api(engine, queue, _resolving_to(address))
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    body = assert_problem(_create(api, owner, ws, url="https://hooks.customer.example/in"), 422)
    assert address in body["errors"][0]["message"]
    assert _create(_api(engine, queue, _resolving_to("1.1.1.1")), owner, ws,
                   url="https://hooks.customer.example/in").status_code == 201


@pytest.mark.parametrize("events", [[], ["balance.high"], "balance.low"])
def test_events_must_name_known_types(api, owned, events):
    owner, ws = owned
    assert assert_problem(_create(api, owner, ws, events=events), 422)["errors"][0]["field"].startswith("events")
