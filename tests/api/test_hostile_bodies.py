"""Hostile bodies and ids on the POST endpoints that create things or move money: a clear 4xx problem+json
that says what is wrong, and nothing written: no row in any table (Idempotency-Keys included: every hostile
body is sent with one), no task queued, no rate-limit budget spent."""
import json
import uuid
from dataclasses import dataclass

import pytest
from falcon import testing
from sqlalchemy import func, select

from api.app import create_app
from api.json_body import MAX_BODY_BYTES
from api.schemas import USAGE_MAX_BODY_BYTES
from domain.providers.stripe_gateway import StripeGateway
from domain.providers.x402_gateway import X402Config, X402Gateway
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.tables import metadata
from domain.store.uow import UnitOfWork
from tests.api.checks import assert_problem
from tests.conftest import RecordingQueue
from tests.factories import OPERATOR_TOKEN, Api, new_linked_account
from tests.standins.stripe_api import StripeStandIn


@dataclass(frozen=True)
class Target:
    path: str
    key: str
    body: dict
    limit: int = MAX_BODY_BYTES


@dataclass(frozen=True)
class World:
    api: Api
    engine: object
    queue: RecordingQueue
    owner_key: str
    workspace_id: str
    targets: dict[str, Target]


@pytest.fixture(scope="module")
def world(engine) -> World:
    """One app (Stripe behind a loopback stand-in; x402 terms, no payments) and one owner with a workspace
    for the whole module: every test proves that its requests wrote nothing, so they cannot disturb another."""
    stripe = StripeStandIn().start()
    queue = RecordingQueue()
    services = Services(Context(
        uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(),
        stripe=StripeGateway("sk_test_standin", "whsec_test", stripe.url, timeout_seconds=2),
        x402=X402Gateway(X402Config(pay_to="0x1563915e194D8CfBA1943570603F7606A3115508", network="eip155:84532",
                                    facilitator_url="http://127.0.0.1:9", timeout_seconds=1.0))))
    api = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {})))
    owner, member = api.new_user("Owner"), api.new_user("Member")
    ws = api.new_workspace(owner)
    spare = new_linked_account(api, owner, api.new_workspace(owner, "Other")["id"], "Spare")  # not linked to ws
    base = f"/workspaces/{ws['id']}"
    assert api.call("GET", f"{base}/rate-limits", owner.key).status_code == 200  # stores its tier before state()
    event = {"eventId": "evt-1", "metric": "api.requests", "quantity": 1, "amountCents": 5}
    targets = {
        "users": Target("/users", OPERATOR_TOKEN, {"email": f"{uuid.uuid4().hex}@example.com", "name": "Ada"}),
        "workspaces": Target("/workspaces", owner.key, {"name": "Acme", "billingAccountId": spare["id"]}),
        "members": Target(f"{base}/members", owner.key, {"userId": member.id, "role": "member"}),
        "accounts": Target(f"{base}/billing/accounts", owner.key, {"name": "Project"}),
        "link": Target(f"{base}/billing/accounts/link", owner.key, {"billingAccountId": spare["id"]}),
        "credits": Target(f"{base}/billing/credits", OPERATOR_TOKEN, {"amountCents": 500, "description": "goodwill"}),
        "usage": Target(f"{base}/billing/usage", OPERATOR_TOKEN, {"events": [event]}, USAGE_MAX_BODY_BYTES),
        "stripe checkout": Target(f"{base}/billing/checkout", owner.key, {
            "amountCents": 500, "successUrl": "https://app.example/ok", "cancelUrl": "https://app.example/no"}),
        "x402 checkout": Target(f"{base}/billing/checkout/x402", owner.key, {"amountCents": 500}),
        "rate-limit check": Target(f"{base}/rate-limits/check", OPERATOR_TOKEN, {"cost": 1}),
    }
    yield World(api, engine, queue, owner.key, ws["id"], targets)
    stripe.stop()


TARGETS = ["users", "workspaces", "members", "accounts", "link", "credits", "usage", "stripe checkout",
           "x402 checkout", "rate-limit check"]
# Where each money-moving target keeps its amount (or, for the rate-limit check, its cost) in the body.
AMOUNTS = {"credits": ("amountCents",), "usage": ("events", 0, "amountCents"), "stripe checkout": ("amountCents",),
           "x402 checkout": ("amountCents",), "rate-limit check": ("cost",)}
# Where each target has a text field of its own, if it has one.
TEXTS = {"users": ("name",), "workspaces": ("name",), "members": ("role",), "accounts": ("name",),
         "link": ("billingAccountId",), "credits": ("description",), "usage": ("events", 0, "metric"),
         "stripe checkout": ("successUrl",)}
# Valid answers to a valid body: x402 asks for the payment (402) before anything is written.
ACCEPTED = {"users": 201, "workspaces": 201, "members": 201, "accounts": 201, "link": 201, "credits": 202,
            "usage": 202, "stripe checkout": 201, "x402 checkout": 402, "rate-limit check": 200}


def state(world: World, target: Target) -> tuple:
    """Rows in every table and tasks queued, and for the rate-limit check the budget left."""
    counts = select(*(select(func.count()).select_from(t).scalar_subquery().label(t.name)
                      for t in metadata.sorted_tables))
    with world.engine.connect() as conn:
        rows = dict(conn.execute(counts).one()._mapping)
    budget = None
    if target.path.endswith("/rate-limits/check"):
        budget = world.api.call("GET", target.path.removesuffix("/check"), world.owner_key).json["remaining"]
    return rows, len(world.queue.sent), budget


def send(world: World, target: Target, raw: bytes | str, path: str | None = None, **headers):
    headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex, **headers}
    return world.api.call("POST", path or target.path, target.key, body=raw,
                          headers={name: value for name, value in headers.items() if value is not None})


def refused(world: World, target: Target, raw: bytes | str, status: int, *, path: str | None = None,
            **headers) -> dict:
    """Send it (with a fresh Idempotency-Key unless told otherwise); the answer is a `status` problem, and
    nothing was written or spent."""
    rows, tasks, budget = state(world, target)
    body = assert_problem(send(world, target, raw, path, **headers), status)
    after_rows, after_tasks, after_budget = state(world, target)
    assert (after_rows, after_tasks) == (rows, tasks)
    assert after_budget is None or after_budget >= budget  # the moving window may free budget, never spend it
    return body


def placed(body: dict, where: tuple, value) -> dict:
    """A deep copy of body with the value at `where` replaced."""
    copy = json.loads(json.dumps(body))
    node = copy
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    return copy


def test_each_valid_body_is_accepted_so_the_refusals_below_are_the_bodies_fault(world):
    for name in TARGETS:
        target = world.targets[name]
        result = send(world, target, json.dumps(target.body))
        assert result.status_code == ACCEPTED[name], (name, result.text)
    assert_problem(send(world, world.targets["users"], json.dumps(world.targets["users"].body)), 409)


# -- size --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TARGETS)
def test_a_body_over_the_limit_is_too_large(world, name):
    target = world.targets[name]
    raw = json.dumps(target.body)[:-1] + ', "padding": "' + "x" * target.limit + '"}'
    assert "limited to" in refused(world, target, raw, 413)["detail"]


@pytest.mark.parametrize("name", TARGETS)
def test_a_content_length_beyond_the_limit_is_too_large_before_the_body_is_read(world, name):
    target = world.targets[name]
    refused(world, target, json.dumps(target.body), 413, **{"Content-Length": str(10 ** 12)})


# -- structure ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TARGETS)
def test_ten_thousand_levels_of_nesting_are_a_bad_request(world, name):
    target = world.targets[name]
    first = next(iter(target.body))
    raw = json.dumps(target.body).replace(json.dumps(first) + ": ", json.dumps(first) + ": " + "[" * 10_000, 1)
    raw = raw[:-1] + "]" * 10_000 + "}"
    assert "nests deeper" in refused(world, target, raw, 400)["detail"]


@pytest.mark.parametrize("name", TARGETS)
def test_a_key_given_twice_is_a_bad_request_even_with_the_same_value(world, name):
    """Refused rather than resolved: {"amountCents": 1, "amountCents": 100000} must not mean either."""
    target = world.targets[name]
    first, value = next(iter(target.body.items()))
    for repeated in (value, "something else"):
        raw = "{" + json.dumps(first) + ": " + json.dumps(repeated) + ", " + json.dumps(target.body)[1:]
        detail = refused(world, target, raw, 400)["detail"]
        assert "duplicate key" in detail and first in detail


def test_a_key_given_twice_deep_inside_a_usage_event_is_a_bad_request(world):
    target = world.targets["usage"]
    raw = json.dumps(target.body).replace('"amountCents": 5', '"amountCents": 1, "amountCents": 100000')
    assert "amountCents" in refused(world, target, raw, 400)["detail"]


# -- encoding ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encode", [
    pytest.param(lambda text: text.encode("utf-16"), id="utf-16 with BOM"),
    pytest.param(lambda text: text.encode("utf-16-le"), id="utf-16 without BOM"),
    pytest.param(lambda text: text.encode("utf-32"), id="utf-32"),
    pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="utf-8 with BOM"),
    pytest.param(lambda text: text.encode("latin-1").replace(b'"', b'"\xe9', 1), id="latin-1"),
    pytest.param(lambda text: text.encode()[:-1] + b', "x": "\xff\xfe"}', id="invalid bytes"),
    pytest.param(lambda text: text.encode()[:-1] + b', "x": "\xed\xa0\x80"}', id="utf-8 encoded surrogate"),
    pytest.param(lambda text: text.encode()[:-1] + b', "x": "\xc0\xaf"}', id="overlong utf-8"),
])
@pytest.mark.parametrize("name", TARGETS)
def test_a_body_that_is_not_utf_8_is_a_bad_request(world, name, encode):
    target = world.targets[name]
    detail = refused(world, target, encode(json.dumps(target.body)), 400)["detail"]
    assert "UTF-8" in detail


@pytest.mark.parametrize("name", TARGETS)
def test_a_lone_surrogate_escape_is_a_bad_request(world, name):
    """Valid JSON syntax, but not text: PostgreSQL could not store it. In a text field, or else in a key."""
    target = world.targets[name]
    if name in TEXTS:
        raw = json.dumps(placed(target.body, TEXTS[name], "a__surrogate__b"))
    else:
        raw = json.dumps(target.body)[:-1] + ', "__surrogate__": 1}'
    assert "surrogate" in refused(world, target, raw.replace("__surrogate__", "\\ud800"), 400)["detail"]


# -- numbers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("name", TARGETS)
def test_nan_and_infinity_are_a_bad_request(world, name, literal):
    target = world.targets[name]
    where = AMOUNTS.get(name, (next(iter(target.body)),))
    raw = json.dumps(placed(target.body, where, "__literal__")).replace('"__literal__"', literal)
    assert literal.lstrip("-") in refused(world, target, raw, 400)["detail"]


@pytest.mark.parametrize("number", [str(2 ** 63), str(2 ** 64), str(-(2 ** 63) - 1), str(2 ** 200), "1" + "0" * 4000])
@pytest.mark.parametrize("name", sorted(AMOUNTS))
def test_an_amount_beyond_64_bits_is_unprocessable(world, name, number):
    target = world.targets[name]
    raw = json.dumps(placed(target.body, AMOUNTS[name], "__number__")).replace('"__number__"', number)
    fields = [e["field"] for e in refused(world, target, raw, 422)["errors"]]
    assert fields == [".".join(str(s) for s in AMOUNTS[name]).replace(".0.", "[0].")]


@pytest.mark.parametrize("number", ["1.0", "100.0", "1e2", "1E2", "5e0", "0.5e3", "1.5"])
@pytest.mark.parametrize("name", sorted(AMOUNTS))
def test_an_amount_written_as_a_float_is_unprocessable_even_when_whole(world, name, number):
    target = world.targets[name]
    raw = json.dumps(placed(target.body, AMOUNTS[name], "__number__")).replace('"__number__"', number)
    body = refused(world, target, raw, 422)
    assert [e["field"] for e in body["errors"]] == [".".join(str(s) for s in AMOUNTS[name]).replace(".0.", "[0].")]
    assert "integer" in body["errors"][0]["message"]


# -- look-alike ids ----------------------------------------------------------------------------------------

LOOK_ALIKES = {"a": "\u0430", "b": "\u044c", "c": "\u0441", "e": "\u0435", "s": "\u0455", "w": "\u0461"}


def confusables(real_id: str) -> list[str]:
    """Ids a person would read as real_id: Cyrillic letters, fullwidth or Arabic-Indic digits, invisible
    or bidi characters, another case, padding."""
    prefix, _, tail = real_id.partition("_")
    digit = next(i for i, c in enumerate(tail) if c.isdigit())
    letter = next(i for i, c in enumerate(tail) if c in LOOK_ALIKES)
    fakes = [
        "".join(LOOK_ALIKES.get(c, c) for c in prefix) + "_" + tail,  # "ѡѕ_", "Ьа_", "uѕr_"
        f"{prefix}_{tail[:letter]}{LOOK_ALIKES[tail[letter]]}{tail[letter + 1:]}",
        f"{prefix}_{tail[:digit]}{chr(0xFF10 + int(tail[digit]))}{tail[digit + 1:]}",  # fullwidth digit
        f"{prefix}_{tail[:digit]}{chr(0x0660 + int(tail[digit]))}{tail[digit + 1:]}",  # Arabic-Indic digit
        f"{prefix}_\u200d{tail}",  # zero-width joiner
        f"{prefix}_{tail}\u200b",  # zero-width space
        f"\u202e{real_id}",  # right-to-left override
        f"{prefix.upper()}_{tail}",
        f"{prefix}_{tail.upper()}",
        f" {real_id}",
        f"{real_id}\u00a0",
    ]
    assert real_id not in fakes
    return fakes


# A look-alike id is well-formed input that names nothing: the endpoint answers 404, and (as for any 404 it
# answers) would store that answer under an Idempotency-Key, so these requests carry none.
@pytest.mark.parametrize("name", [n for n in TARGETS if n not in ("users", "workspaces")])
def test_a_look_alike_workspace_id_in_the_path_names_nothing(world, name):
    target = world.targets[name]
    for fake in confusables(world.workspace_id):
        path = target.path.replace(world.workspace_id, fake)
        refused(world, target, json.dumps(target.body), 404, path=path, **{"Idempotency-Key": None})


@pytest.mark.parametrize("name, field", [("workspaces", "billingAccountId"), ("link", "billingAccountId"),
                                         ("members", "userId")])
def test_a_look_alike_id_in_the_body_names_nothing(world, name, field):
    target = world.targets[name]
    for fake in confusables(target.body[field]):
        refused(world, target, json.dumps(target.body | {field: fake}), 404, **{"Idempotency-Key": None})
