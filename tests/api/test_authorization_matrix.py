"""Who may call what: every endpoint of the contract against eight callers, each cell's status written out;
other users' ids answer like ids that do not exist; lists show no foreign rows; keys are kept as hashes."""
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app, routes
from domain.names import Task
from domain.providers.stripe_gateway import StripeGateway
from domain.providers.x402_gateway import X402Config, X402Gateway
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.services.users import hash_key
from domain.store import users as user_store
from domain.store.uow import UnitOfWork
from tests import contract
from tests.api.checks import TABLES
from tests.conftest import RecordingQueue
from tests.factories import OPERATOR_TOKEN, Api, UserKey, new_linked_account, post
from tests.standins.stripe_api import signed_event

WEBHOOK_SECRET = "whsec_matrix"
CALLERS = ("anonymous", "unknown", "revoked", "stranger", "member", "admin", "owner", "operator")
MISSING = {"ws": "ws_" + "0" * 32, "ba": "ba_" + "0" * 32, "op": "op_" + "0" * 32, "chk": "chk_" + "0" * 32,
           "hold": "hold_" + "0" * 32, "wh": "wh_" + "0" * 32, "dlv": "dlv_" + "0" * 32}
# What a refused request must leave as it was: rows of these tables, and holds settled or captured.
WRITE_TABLES = (*TABLES, "checkouts", "grants", "holds", "spend_limits", "billing_settings", "webhook_endpoints",
                "webhook_endpoints WHERE deleted_at IS NOT NULL", "webhook_deliveries WHERE enqueued_at IS NOT NULL", "holds WHERE settled_at IS NOT NULL",
                "holds WHERE capture_operation_id IS NOT NULL", "stripe_customers", "auto_top_ups")


@dataclass
class World:
    """The owner's workspace with an admin and a member; a stranger with a workspace of their own; a
    revoked user who was an admin of the workspace. One world serves the whole matrix: what an allowed
    caller changes never decides another cell (each manager unlinks an account of its own, a new default
    is set back)."""

    keys: dict[str, str | None]
    people: dict[str, UserKey]
    ws: str
    side: str  # the owner's second workspace
    stranger_ws: str
    extra: str  # the owner's, linked to ws, not its default
    unlinked_by: dict[str, str]  # likewise, one each for the admin and the owner to unlink
    spare: str  # the owner's, linked to another workspace of the owner only
    operation: str  # queued by the owner
    checkout: str  # a Stripe checkout of ws
    holds: tuple[str, str]  # two holds on ws: one to capture, one to release
    endpoints: dict[str, str]  # webhook endpoints of ws: "kept", and one each for the admin and the owner to delete
    delivery: str  # a delivery of the kept endpoint

    def ids(self) -> dict[str, str]:
        return {"workspace_id": self.ws, "account_id": self.extra, "operation_id": self.operation,
                "checkout_id": self.checkout, "hold_id": self.holds[0], "endpoint_id": self.endpoints["kept"],
                "delivery_id": self.delivery}

    def own_unlinked_account(self, caller: str) -> str:
        """An account the caller owns that is not linked to ws (the operator owns none)."""
        person = self.people.get(caller)
        return self.spare if person is None or caller == "owner" else person.default_account_id


def _no_body(w: World, caller: str) -> dict:
    return {}


def _json(body: dict | Callable[[World, str], dict]) -> Callable[[World, str], dict]:
    return lambda w, caller: {"json": body(w, caller) if callable(body) else body}


def _webhook(w: World, caller: str) -> dict:
    payload, signature = signed_event(WEBHOOK_SECRET, "customer.created", {"id": "cus_1", "object": "customer"})
    return {"body": payload, "headers": {"Stripe-Signature": signature, "Content-Type": "application/json"}}


def _usage_event(w: World, caller: str) -> dict:
    return {"events": [{"eventId": uuid.uuid4().hex, "metric": "api_calls", "quantity": 1, "amountCents": 1}]}


def _unlinked_by_each_manager(w: World, caller: str) -> dict:
    return {"account_id": w.unlinked_by.get(caller, w.unlinked_by["admin"])}


def _deleted_by_each_manager(w: World, caller: str) -> dict:
    return {"endpoint_id": w.endpoints.get(caller, w.endpoints["admin"])}


def _owner_restores_the_default(w: World, caller: str) -> dict:
    return {"account_id": w.people["owner"].default_account_id if caller == "owner" else w.extra}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the route template of api/app.py
    expected: tuple[int, ...]  # one status per caller, in CALLERS order
    send: Callable[[World, str], dict] = _no_body  # keyword arguments of Api.call beyond the key
    ids: Callable[[World, str], dict] = lambda w, caller: {}  # path ids beyond World.ids()

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


WS = "/workspaces/{workspace_id}"
HOOK_URL = "https://1.1.1.1/billing-hooks"  # a public address given as such: nothing to resolve
CHECKOUT = {"amountCents": 500, "successUrl": "https://app.example/ok", "cancelUrl": "https://app.example/cancel"}
ENDPOINTS = [
    # method, path                                                     anon unkn revk strg memb admn ownr oper
    Endpoint("POST", "/users",                                         (401, 401, 401, 403, 403, 403, 403, 201),
             _json(lambda w, c: {"email": f"new-{uuid.uuid4().hex}@example.com"})),
    Endpoint("GET", "/users/me",                                       (401, 401, 401, 200, 200, 200, 200, 403)),
    Endpoint("POST", "/workspaces",                                    (401, 401, 401, 201, 201, 201, 201, 403),
             _json({"name": "New"})),
    Endpoint("GET", "/workspaces",                                     (401, 401, 401, 200, 200, 200, 200, 403)),
    Endpoint("GET", WS,                                                (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("POST", WS + "/members",                                  (401, 401, 401, 404, 403, 201, 201, 403),
             _json(lambda w, c: {"userId": w.people["newcomer"].id, "role": "member"})),
    Endpoint("GET", "/billing-accounts",                               (401, 401, 401, 200, 200, 200, 200, 403)),
    Endpoint("GET", "/billing-accounts/{account_id}",                  (401, 401, 401, 404, 404, 404, 200, 200)),
    Endpoint("GET", "/billing-accounts/{account_id}/balance",          (401, 401, 401, 404, 404, 404, 200, 200)),
    Endpoint("GET", "/billing-accounts/{account_id}/summary",          (401, 401, 401, 404, 404, 404, 200, 200)),
    Endpoint("GET", "/billing-accounts/{account_id}/transactions",     (401, 401, 401, 404, 404, 404, 200, 200)),
    Endpoint("GET", "/billing-accounts/{account_id}/grants",           (401, 401, 401, 404, 404, 404, 200, 200)),
    Endpoint("GET", WS + "/billing/accounts",                          (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("POST", WS + "/billing/accounts",                         (401, 401, 401, 404, 403, 201, 201, 403),
             _json({"name": "New"})),
    Endpoint("POST", WS + "/billing/accounts/link",                    (401, 401, 401, 404, 403, 201, 201, 403),
             _json(lambda w, c: {"billingAccountId": w.own_unlinked_account(c)})),
    Endpoint("POST", WS + "/billing/accounts/{account_id}/default",    (401, 401, 401, 404, 403, 200, 200, 403),
             ids=_owner_restores_the_default),
    Endpoint("DELETE", WS + "/billing/accounts/{account_id}",          (401, 401, 401, 404, 403, 204, 204, 403),
             ids=_unlinked_by_each_manager),
    Endpoint("GET", WS + "/billing/balance",                           (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/billing/transactions",                      (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/billing/summary",                           (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/billing/grants",                            (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("POST", WS + "/billing/holds",                            (401, 401, 401, 404, 403, 403, 403, 201),
             _json({"amountCents": 1})),
    Endpoint("GET", WS + "/billing/holds",                             (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/billing/holds/{hold_id}",                   (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("POST", WS + "/billing/holds/{hold_id}/capture",          (401, 401, 401, 404, 403, 403, 403, 202),
             _json({"amountCents": 1})),
    Endpoint("POST", WS + "/billing/holds/{hold_id}/release",          (401, 401, 401, 404, 403, 403, 403, 200),
             ids=lambda w, caller: {"hold_id": w.holds[1]}),
    Endpoint("GET", WS + "/billing/spend-limit",                       (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("PUT", WS + "/billing/spend-limit",                       (401, 401, 401, 404, 403, 200, 200, 403),
             _json({"monthlyLimitCents": None})),
    Endpoint("GET", WS + "/billing/settings",                          (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("PUT", WS + "/billing/settings",                          (401, 401, 401, 404, 403, 200, 200, 403),
             _json({"lowBalanceCents": 100,
                    "autoTopUp": {"enabled": True, "thresholdCents": 100, "amountCents": 500}})),
    Endpoint("POST", WS + "/billing/credits",                          (401, 401, 401, 404, 403, 403, 403, 202),
             _json({"amountCents": 100})),
    Endpoint("POST", WS + "/billing/usage",                            (401, 401, 401, 404, 403, 403, 403, 202),
             _json(_usage_event)),
    Endpoint("GET", WS + "/billing/usage-overview",                    (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/rate-limits",                               (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("POST", WS + "/rate-limits/refresh",                      (401, 401, 401, 404, 403, 202, 202, 202)),
    Endpoint("POST", WS + "/rate-limits/check",                        (401, 401, 401, 404, 403, 403, 403, 200),
             _json({"cost": 1})),
    Endpoint("POST", WS + "/billing/checkout",                         (401, 401, 401, 404, 403, 201, 201, 403),
             _json(CHECKOUT | {"savePaymentMethod": True})),
    # 402 is the unpaid request's answer: the terms to pay; a paid one answers 202 (tests/api/test_x402_checkout.py)
    Endpoint("POST", WS + "/billing/checkout/x402",                    (401, 401, 401, 404, 403, 402, 402, 403),
             _json({"amountCents": 500})),
    Endpoint("GET", WS + "/billing/checkouts",                         (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/billing/checkouts/{checkout_id}",           (401, 401, 401, 404, 200, 200, 200, 200)),
    Endpoint("GET", WS + "/webhook-endpoints",                         (401, 401, 401, 404, 403, 200, 200, 200)),
    Endpoint("POST", WS + "/webhook-endpoints",                        (401, 401, 401, 404, 403, 201, 201, 403),
             _json({"url": HOOK_URL, "events": ["balance.low"]})),
    Endpoint("GET", WS + "/webhook-endpoints/{endpoint_id}",           (401, 401, 401, 404, 403, 200, 200, 200)),
    Endpoint("DELETE", WS + "/webhook-endpoints/{endpoint_id}",        (401, 401, 401, 404, 403, 204, 204, 403),
             ids=_deleted_by_each_manager),
    Endpoint("GET", WS + "/webhook-endpoints/{endpoint_id}/deliveries",
                                                                       (401, 401, 401, 404, 403, 200, 200, 200)),
    Endpoint("POST", WS + "/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
                                                                       (401, 401, 401, 404, 403, 202, 202, 403)),
    Endpoint("GET", "/operations/{operation_id}",                      (401, 401, 401, 404, 404, 404, 200, 200)),
    # Stripe signs its webhooks; no bearer key is asked for, and one sent is not looked at
    Endpoint("POST", "/webhooks/stripe",                               (200, 200, 200, 200, 200, 200, 200, 200),
             _webhook),
    Endpoint("GET", "/health",                                         (200, 200, 200, 200, 200, 200, 200, 200)),
    Endpoint("GET", "/ready",                                          (200, 200, 200, 200, 200, 200, 200, 200)),
    Endpoint("GET", "/openapi.json",                                   (200, 200, 200, 200, 200, 200, 200, 200)),
    Endpoint("GET", "/docs",                                           (200, 200, 200, 200, 200, 200, 200, 200)),
    Endpoint("GET", "/metrics",                                        (200, 200, 200, 200, 200, 200, 200, 200)),
]


@pytest.fixture(scope="module")
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture(scope="module")
def services(engine, queue, stripe_api) -> Services:
    """The real services, with Stripe (the stand-in) and x402 configured: every endpoint can answer."""
    stripe = StripeGateway("sk_test_standin", WEBHOOK_SECRET, stripe_api.url, timeout_seconds=2)
    x402 = X402Gateway(X402Config(pay_to="0x1563915e194D8CfBA1943570603F7606A3115508",
                                  facilitator_url="http://127.0.0.1:9", timeout_seconds=1))
    return Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(intro_credit_cents=1000),
                            stripe=stripe, x402=x402))


@pytest.fixture(scope="module")
def api(services) -> Api:
    return Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {"database": lambda: None})))


def _created(result, status: int = 201) -> dict:
    assert result.status_code == status, result.text
    return result.json


def new_world(api: Api, services: Services) -> World:
    people = {name: api.new_user(name.title()) for name in ("owner", "admin", "member", "stranger", "revoked",
                                                            "newcomer")}
    owner = people["owner"]
    ws = api.new_workspace(owner)["id"]
    for name in ("admin", "member", "revoked"):
        api.add_member(owner, ws, people[name], "member" if name == "member" else "admin")
    extra, first, second = (new_linked_account(api, owner, ws, name)["id"] for name in ("Extra", "One", "Two"))
    side = api.new_workspace(owner, "Side")["id"]
    spare = new_linked_account(api, owner, side, "Spare")["id"]
    operation = _created(api.call("POST", f"/workspaces/{ws}/rate-limits/refresh", owner.key), 202)["id"]
    checkout = _created(api.call("POST", f"/workspaces/{ws}/billing/checkout", owner.key, json=CHECKOUT))["id"]
    holds = tuple(_created(api.operator("POST", f"/workspaces/{ws}/billing/holds", json={"amountCents": 1}))["id"]
                  for _ in range(2))
    assert api.call("GET", "/users/me", people["revoked"].key).status_code == 200
    with services.ctx.uow() as uow:  # no endpoint revokes keys; the store's function does
        assert user_store.revoke_keys(uow.conn, people["revoked"].id) == 1
        uow.commit()
    keys = {"anonymous": None, "unknown": "bk_" + "x" * 43, "operator": OPERATOR_TOKEN}
    keys |= {name: people[name].key for name in ("revoked", "stranger", "member", "admin", "owner")}
    endpoints = {name: _created(api.call("POST", f"/workspaces/{ws}/webhook-endpoints", owner.key, json={
        "url": HOOK_URL, "events": ["transaction.created"]}))["id"] for name in ("kept", "admin", "owner")}
    post(services, owner.default_account_id, 100)  # an event, delivered to each
    deliveries = _created(api.call("GET", f"/workspaces/{ws}/webhook-endpoints/{endpoints['kept']}/deliveries",
                                   owner.key), 200)["data"]
    return World(keys, people, ws, side, api.new_workspace(people["stranger"], "Theirs")["id"], extra,
                 {"admin": first, "owner": second}, spare, operation, checkout, holds, endpoints, deliveries[0]["id"])


@pytest.fixture(scope="module")
def world(api, services) -> World:
    return new_world(api, services)


def written(engine) -> dict[str, int]:
    with engine.connect() as conn:
        counts = conn.execute(text("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in WRITE_TABLES))).one()
    return dict(zip(WRITE_TABLES, counts))


def call(api: Api, w: World, endpoint: Endpoint, caller: str, **ids: str):
    path = endpoint.path.format(**(w.ids() | endpoint.ids(w, caller) | ids))
    kwargs = endpoint.send(w, caller)
    if endpoint.method == "POST":
        kwargs["headers"] = kwargs.get("headers", {}) | {"Idempotency-Key": uuid.uuid4().hex}
    return api.call(endpoint.method, path, w.keys[caller], **kwargs)


def _served_endpoints(services) -> set[str]:
    return {f"{name[3:].upper()} {path}" for path, resource in routes(services, {})
            for name in dir(resource) if name.startswith("on_")}


def _shape(endpoint: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", endpoint)


def test_the_matrix_lists_every_served_endpoint_and_every_endpoint_of_the_contract(services):
    listed = [str(e) for e in ENDPOINTS]
    assert len(listed) == len(set(listed)) and all(len(e.expected) == len(CALLERS) for e in ENDPOINTS)
    assert set(listed) == _served_endpoints(services), "a new endpoint needs its row in ENDPOINTS"
    facilitator = {"POST /verify", "POST /settle"}  # the x402 facilitator's, which the service calls
    assert {_shape(e) for e in contract.endpoints()} - facilitator <= {_shape(e) for e in listed}
    # the contract's sections not built yet (tests/contract.py) are not served in part either
    assert {_shape(e) for e in contract.endpoints(served=False)} & {_shape(e) for e in listed} == set()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_each_caller_gets_the_status_written_in_the_matrix(api, world, engine, endpoint):
    """Refused callers go first and must write nothing; the allowed ones then each succeed in turn."""
    answered = {}
    for caller, expected in zip(CALLERS, endpoint.expected):
        before = written(engine) if expected >= 400 and endpoint.method != "GET" else None
        result = call(api, world, endpoint, caller)
        answered[caller] = result.status_code
        if expected != 402 and result.status_code >= 400:
            assert result.headers["content-type"] == "application/problem+json", (caller, result.text)
        if before is not None:
            assert written(engine) == before, (caller, result.text)
    assert answered == dict(zip(CALLERS, endpoint.expected))


def _answer(result) -> tuple:
    return result.status_code, result.text, {k: v for k, v in result.headers.items() if k.lower() != "x-request-id"}


def _same_as_missing(foreign, missing) -> None:
    assert foreign.status_code == 404, foreign.text
    assert _answer(foreign) == _answer(missing)


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if "{" in e.path], ids=str)
def test_another_users_object_in_the_path_answers_like_one_that_does_not_exist(api, world, endpoint):
    """The stranger names the owner's workspace, account, operation, checkout: as if there were none, or as
    if the id did not even parse."""
    foreign = call(api, world, endpoint, "stranger")
    prefixes = {"workspace_id": "ws", "account_id": "ba", "operation_id": "op", "checkout_id": "chk",
                "hold_id": "hold", "endpoint_id": "wh", "delivery_id": "dlv"}
    for name in re.findall(r"\{(\w+)\}", endpoint.path):
        for missing in (MISSING[prefixes[name]], "not-an-id"):
            _same_as_missing(foreign, call(api, world, endpoint, "stranger", **{name: missing}))


def test_another_users_account_or_checkout_named_in_ones_own_workspace_answers_like_a_missing_one(api, world):
    stranger, theirs = world.keys["stranger"], f"/workspaces/{world.stranger_ws}"
    own_checkout = _created(api.call("POST", f"{theirs}/billing/checkout", stranger, json=CHECKOUT))

    def compare(method: str, template: str, body: Callable[[str], dict] | None = None, params=None) -> None:
        answers = []
        for account in (world.extra, world.people["owner"].default_account_id, MISSING["ba"]):
            answers.append(api.call(method, template.format(account), stranger, json=body(account) if body else None,
                                    params=params(account) if params else None))
        for foreign in answers[:2]:
            _same_as_missing(foreign, answers[2])

    compare("POST", "/workspaces", lambda a: {"name": "Mine", "billingAccountId": a})
    compare("POST", theirs + "/billing/accounts/link", lambda a: {"billingAccountId": a})
    compare("POST", theirs + "/billing/accounts/{}/default")
    compare("DELETE", theirs + "/billing/accounts/{}")
    compare("GET", theirs + "/billing/transactions", params=lambda a: {"billingAccountId": a})
    foreign = api.call("GET", f"{theirs}/billing/checkouts/{world.checkout}", stranger)
    _same_as_missing(foreign, api.call("GET", f"{theirs}/billing/checkouts/{MISSING['chk']}", stranger))
    assert api.call("GET", f"{theirs}/billing/checkouts/{own_checkout['id']}", stranger).status_code == 200


def test_list_endpoints_show_only_the_callers_own_rows(api, services, queue, engine):
    """The stranger has rows of every kind, and their lists show exactly those; no list of anyone else's
    shows any of them."""
    world = new_world(api, services)
    stranger, theirs = world.people["stranger"], world.stranger_ws
    new_linked_account(api, stranger, theirs, "Theirs too")
    sent = len(queue.sent)
    _created(api.operator("POST", f"/workspaces/{theirs}/billing/credits", json={"amountCents": 300}), 202)
    _created(api.operator("POST", f"/workspaces/{theirs}/billing/usage", json=_usage_event(world, "operator")), 202)
    _created(api.call("POST", f"/workspaces/{theirs}/billing/checkout", stranger.key, json=CHECKOUT))
    for name, kwargs in queue.sent[sent:]:
        if name == Task.APPLY_OPERATION:
            services.operations.apply(kwargs["operation_id"])
    with engine.connect() as conn:
        their_rows = set(conn.execute(text(
            "SELECT id FROM billing_accounts WHERE owner_user_id = :u UNION SELECT id FROM workspaces "
            "WHERE owner_user_id = :u UNION SELECT id FROM checkouts WHERE workspace_id = :w"),
            {"u": stranger.id, "w": theirs}).scalars())
        their_rows |= {services.ctx.ids.transaction(entry_id) for entry_id in conn.execute(text(
            "SELECT e.id FROM ledger_entries e JOIN billing_accounts a ON a.id = e.billing_account_id "
            "WHERE a.owner_user_id = :u"), {"u": stranger.id}).scalars()}

    def listed(caller: str, path: str) -> set[str]:
        result = api.call("GET", path, world.keys[caller])
        assert result.status_code == 200, result.text
        return {str(row["id"]) for row in result.json["data"]}

    def lists(account_id: str, workspace_id: str) -> list[str]:
        base = f"/workspaces/{workspace_id}/billing"
        return ["/workspaces", "/billing-accounts", f"/billing-accounts/{account_id}/transactions",
                f"{base}/accounts", f"{base}/transactions", f"{base}/checkouts"]

    assert set().union(*(listed("stranger", p) for p in lists(stranger.default_account_id, theirs))) == their_rows
    assert len(their_rows) == 7  # two accounts, a workspace, a checkout; intro credit, credit, usage
    for caller in ("member", "admin", "owner"):
        me = world.people[caller]
        for path in lists(me.default_account_id, world.ws):
            assert listed(caller, path) & their_rows == set(), (caller, path)
        assert listed(caller, "/workspaces") == ({world.ws, world.side} if caller == "owner" else {world.ws})
        owned = api.call("GET", "/billing-accounts", me.key).json["data"]
        assert {a["ownerUserId"] for a in owned} == {me.id}
        overview = api.call("GET", f"/workspaces/{world.ws}/billing/usage-overview", me.key).json
        assert (overview["totalUsageCents"], overview["byMetric"]) == (0, [])
    overview = api.call("GET", f"/workspaces/{theirs}/billing/usage-overview", stranger.key).json
    assert (overview["totalUsageCents"], [m["metric"] for m in overview["byMetric"]]) == (1, ["api_calls"])


def test_api_keys_are_stored_only_as_hashes(api, engine):
    """Nowhere in the database, also not in the stored answer an Idempotency-Key replays."""
    idempotency = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"email": f"hash-{uuid.uuid4().hex}@example.com"}
    created = _created(api.operator("POST", "/users", json=body, headers=idempotency))
    replayed = api.operator("POST", "/users", json=body, headers=idempotency)
    assert replayed.status_code == 201 and replayed.headers["idempotent-replayed"] == "true"
    assert "apiKey" not in replayed.json and replayed.json["id"] == created["id"]
    api_key = created["apiKey"]
    assert api.call("GET", "/users/me", api_key).json["id"] == created["id"]
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash FROM api_keys WHERE user_id = :u"), {"u": created["id"]}).scalars()
        assert [bytes(h) for h in stored] == [hashlib.sha256(api_key.encode()).digest()]
        tables = conn.execute(text("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")).scalars().all()
        needles = {"key": api_key, "hex": api_key.encode().hex()}
        holding = [t for t in tables if conn.execute(text(
            f'SELECT count(*) FROM "{t}" r WHERE strpos(r::text, :key) > 0 OR strpos(r::text, :hex) > 0'),
            needles).scalar()]
    assert "api_keys" in tables and holding == []


def test_the_operator_token_is_compared_in_constant_time_and_user_keys_are_found_by_their_hash(api, monkeypatch):
    """The code path, not a stopwatch: every bearer goes through hmac.compare_digest against the operator
    token, and a user key reaches the database only as its SHA-256."""
    compared, looked_up = [], []
    real_compare, real_lookup = hmac.compare_digest, user_store.user_id_for_key

    def compare_digest(a, b):
        compared.append((a, b))
        return real_compare(a, b)

    def user_id_for_key(conn, key_hash):
        looked_up.append(key_hash)
        return real_lookup(conn, key_hash)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    monkeypatch.setattr(user_store, "user_id_for_key", user_id_for_key)
    user = api.new_user()
    assert (compared, looked_up) == ([(OPERATOR_TOKEN.encode(), OPERATOR_TOKEN.encode())], [])
    compared.clear()
    near_miss = OPERATOR_TOKEN[:-1] + "X"
    assert api.call("GET", "/users/me", near_miss).status_code == 401
    assert api.call("GET", "/users/me", user.key).status_code == 200
    assert compared == [(near_miss.encode(), OPERATOR_TOKEN.encode()), (user.key.encode(), OPERATOR_TOKEN.encode())]
    assert looked_up == [hash_key(near_miss), hash_key(user.key)] == [hashlib.sha256(k.encode()).digest()
                                                                      for k in (near_miss, user.key)]
