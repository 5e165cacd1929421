"""Idempotency-Key windows and leases: a key is free after its window, a dead claim after its lease, and no
request is ever answered with what was recorded for another."""
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import text

from domain.models import OPERATOR_CALLER
from domain.errors import Conflict
from domain.services.idempotency import Claim, KeyedRequest, fingerprint
from tests.api.checks import assert_problem


@pytest.fixture
def two_workspaces(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner, "One"), api.new_workspace(owner, "Two")


def credits(ws: dict, amount: int) -> tuple[str, dict]:
    return f"/workspaces/{ws['id']}/billing/credits", {"amountCents": amount}


def usage(ws: dict, amount: int) -> tuple[str, dict]:
    return f"/workspaces/{ws['id']}/billing/usage", {"events": [
        {"eventId": f"e-{amount}", "metric": "api.calls", "quantity": 1, "amountCents": amount}]}


ENDPOINTS = {"credits": credits, "usage": usage}


def send(api, request: tuple[str, dict], key: str):
    path, body = request
    return api.operator("POST", path, json=body, headers={"Idempotency-Key": key})


def age_keys(engine, seconds: int) -> None:
    """The clock jumps: every key's window started `seconds` earlier."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => :s)"),
                     {"s": seconds})


def expire_leases(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET lease_expires_at = now() - interval '1 second' "
                          "WHERE lease_expires_at IS NOT NULL"))


def operation_of(engine, op_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT workspace_id, payload FROM operations WHERE id = :id"),
                                 {"id": op_id}).mappings().one())


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_key_past_its_window_is_free_and_the_request_under_it_is_processed_as_new(
        api, engine, two_workspaces, endpoint):
    _, one, two = two_workspaces
    make, key = ENDPOINTS[endpoint], uuid.uuid4().hex
    first = send(api, make(one, 111), key)
    assert first.status_code == 202, first.text
    assert_problem(send(api, make(two, 4444), key), 409)  # within the window: another request
    age_keys(engine, 86400 + 1)
    second = send(api, make(two, 4444), key)
    assert second.status_code == 202 and "idempotent-replayed" not in second.headers, second.text
    assert second.json["id"] != first.json["id"]
    assert operation_of(engine, second.json["id"])["workspace_id"] == two["id"]
    again = send(api, make(two, 4444), key)
    assert again.headers["idempotent-replayed"] == "true" and again.json["id"] == second.json["id"]


def test_the_same_request_after_the_window_is_a_new_request_too(api, engine, two_workspaces):
    _, one, _ = two_workspaces
    key = uuid.uuid4().hex
    first = send(api, credits(one, 120), key)
    age_keys(engine, 86400 + 1)
    second = send(api, credits(one, 120), key)
    assert second.status_code == 202 and second.json["id"] != first.json["id"]


def test_the_window_is_set_by_the_configuration(engine, queue, two_workspaces):
    from falcon import testing

    from api.app import create_app
    from domain.services.context import Config, Context
    from domain.services.registry import Services
    from domain.store.uow import UnitOfWork
    from tests.factories import OPERATOR_TOKEN, Api

    short = Api(testing.TestClient(create_app(Services(Context(
        uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(idempotency_ttl_seconds=60))), OPERATOR_TOKEN, {})))
    _, one, two = two_workspaces
    key = uuid.uuid4().hex
    send(short, credits(one, 130), key)
    age_keys(engine, 30)
    assert_problem(send(short, credits(two, 131), key), 409)
    age_keys(engine, 31)
    assert send(short, credits(two, 131), key).status_code == 202


def test_a_claim_left_by_a_dead_process_answers_409_with_retry_after_until_its_lease_runs_out(
        api, services, engine, two_workspaces):
    _, one, _ = two_workspaces
    key, request = uuid.uuid4().hex, usage(one, 140)
    claim = services.idempotency.claim(KeyedRequest(OPERATOR_CALLER.name, key, fingerprint("POST", *request)))
    held = send(api, request, key)
    assert_problem(held, 409)
    assert held.headers["retry-after"] == "1"  # the first request usually ends within it, not in a lease
    expire_leases(engine)
    retried = send(api, request, key)
    assert retried.status_code == 202, retried.text
    from domain.services.idempotency import Replay
    services.idempotency.finish(claim, Replay(202, '{"late": true}', {}))  # the first process, late: not stored
    assert send(api, request, key).json == retried.json


def test_the_retry_of_a_request_whose_process_died_finds_what_that_process_created(api, services, engine,
                                                                                     two_workspaces):
    _, one, _ = two_workspaces
    key, request = uuid.uuid4().hex, usage(one, 150)
    claim = services.idempotency.claim(KeyedRequest(OPERATOR_CALLER.name, key, fingerprint("POST", *request)))
    from domain.usage import Event
    died_after = services.usage.request(OPERATOR_CALLER, one["id"], [Event("e-150", "api.calls", 1, 150, None)],
                                        claim.scope)
    expire_leases(engine)
    retried = send(api, request, key)
    assert retried.status_code == 202 and retried.json["id"] == died_after.id
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM operations WHERE workspace_id = :w AND kind = 'usage'"),
                            {"w": one["id"]}).scalar() == 1


def test_a_5xx_answer_is_not_recorded_and_the_retry_runs_anew(api, services, engine, two_workspaces, monkeypatch):
    _, one, _ = two_workspaces
    key, request = uuid.uuid4().hex, usage(one, 160)

    def down(*args, **kwargs):
        from domain.errors import Unavailable
        raise Unavailable("the database is unavailable")
    monkeypatch.setattr(services.usage, "request", down)
    assert_problem(send(api, request, key), 503)
    monkeypatch.undo()
    retried = send(api, request, key)
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers, retried.text


# Random sequences of requests, keys and bodies, crashed claims, expired leases and clock jumps, against a
# model of what each answer must be.
KEYS, AMOUNTS = ["k1", "k2"], [201, 202]
ACTION = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(KEYS), st.sampled_from(list(ENDPOINTS)), st.integers(0, 1),
              st.sampled_from(AMOUNTS)),
    st.tuples(st.just("crash"), st.sampled_from(KEYS), st.just("usage"), st.integers(0, 1), st.sampled_from(AMOUNTS),
              st.booleans()),
    st.tuples(st.just("expire_leases")),
    st.tuples(st.just("jump")),
)


class KeyModel:
    """What the service must remember of one key: the request holding it and its state."""

    def __init__(self, fp: str, op_id: str | None, running: bool) -> None:
        self.fp, self.op_id, self.running, self.lease_alive = fp, op_id, running, running


def _expected(model: KeyModel | None, fp: str) -> str:
    if model is None:
        return "new"
    if model.running and model.lease_alive:
        return "409"
    if model.running:  # dead claim, lease ran out: taken over; the same request finds what it created
        return "resume" if model.fp == fp else "new"
    return "replay" if model.fp == fp else "409"


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions=st.lists(ACTION, min_size=1, max_size=14))
def test_no_sequence_answers_a_request_with_another_requests_result(api, services, engine, actions):
    owner = api.new_user()
    spaces = [api.new_workspace(owner, "P"), api.new_workspace(owner, "Q")]
    salt, models, seen_ops = uuid.uuid4().hex[:8], {}, set()
    for action in actions:
        if action[0] == "expire_leases":
            expire_leases(engine)
            for m in models.values():
                m.lease_alive = False
            continue
        if action[0] == "jump":
            age_keys(engine, 86400 + 1)
            models.clear()
            continue
        _, key_name, endpoint, ws, amount, *rest = action
        key, request = f"{salt}-{key_name}", ENDPOINTS[endpoint](spaces[ws], amount)
        fp = fingerprint("POST", *request)
        if action[0] == "crash":
            _crash(services, models, key, fp, spaces[ws], amount, rest[0])
            continue
        _check_send(api, engine, models, seen_ops, key, fp, request, spaces[ws], amount)


def _crash(services, models, key, fp, ws, amount, created) -> None:
    """A process claims the key, maybe creates the batch, and dies before answering."""
    try:
        claimed = services.idempotency.claim(KeyedRequest(OPERATOR_CALLER.name, key, fp))
    except Conflict:
        return  # the key was held by another request: the process got a 409, and died then
    if not isinstance(claimed, Claim):
        return  # a replay
    op_id = None
    if created:
        from domain.usage import Event
        op_id = services.usage.request(OPERATOR_CALLER, ws["id"], [Event(f"e-{amount}", "api.calls", 1, amount, None)],
                                       claimed.scope).id
    previous = models.get(key)
    if previous is not None and previous.running and previous.fp == fp and op_id is None:
        op_id = previous.op_id  # a retry of the same request keeps its scope
    models[key] = KeyModel(fp, op_id, running=True)


def _check_send(api, engine, models, seen_ops, key, fp, request, ws, amount) -> None:
    expected = _expected(models.get(key), fp)
    answer = send(api, request, key)
    if expected == "409":
        assert answer.status_code == 409, (expected, answer.text)
        return
    assert answer.status_code == 202, (expected, answer.text)
    op_id = answer.json["id"]
    stored = operation_of(engine, op_id)
    assert stored["workspace_id"] == ws["id"]  # never another request's operation
    assert _amount(stored["payload"]) == amount
    model = models.get(key)
    if expected == "replay" or (expected == "resume" and model.op_id is not None):
        assert op_id == model.op_id
    else:
        assert op_id not in seen_ops
    seen_ops.add(op_id)
    models[key] = KeyModel(fp, op_id, running=False)


def _amount(payload: dict) -> int:
    return payload["amountCents"] if "amountCents" in payload else payload["events"][0]["amountCents"]
