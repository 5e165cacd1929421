"""Tiers that follow the default account, and decisions on a real Redis (127.0.0.1:6379, a key prefix per test)."""
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from falcon import testing
from limits.storage import RedisStorage
from sqlalchemy import text

from api import responses
from api.app import create_app
from domain.ratelimit import FailurePolicy
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store import uow as uow_module, users as users_store
from domain.store.limiter import RedisLimiter, memory_limiter, redis_limiter
from domain.store.uow import UnitOfWork, make_engine
from tests.api.checks import assert_problem
from tests.factories import OPERATOR_TOKEN, Api, new_linked_account, post
from tests.processes import RedisServer

REDIS_URL = "redis://127.0.0.1:6379/0"


def make_limiter(url: str, *, fail_open: bool = True,
                 prefix: str | None = None) -> tuple[FailurePolicy, redis.ConnectionPool, str]:
    prefix = prefix or f"test-rl-{uuid.uuid4().hex}"
    pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=0.25, socket_timeout=0.5)
    return FailurePolicy(redis_limiter(url, pool, key_prefix=prefix), fail_open=fail_open), pool, prefix


@pytest.fixture
def shared_redis():
    """(pool, key prefix) on the shared Redis; only this test's keys are deleted after it, never flushed."""
    pool = redis.ConnectionPool.from_url(REDIS_URL, socket_connect_timeout=0.25, socket_timeout=0.5)
    prefix = f"test-rl-{uuid.uuid4().hex}"
    yield pool, prefix
    client = redis.Redis(connection_pool=pool)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    pool.disconnect()


@pytest.fixture
def limiter(shared_redis):
    pool, prefix = shared_redis
    return FailurePolicy(redis_limiter(REDIS_URL, pool, key_prefix=prefix))


def build_api(engine, queue, limiter, api_rate_limit: int = 0) -> Api:
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(), limiter=limiter))
    return Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {}, api_rate_limit=api_rate_limit)))


@pytest.fixture
def rapi(engine, queue, limiter) -> Api:
    return build_api(engine, queue, limiter)


@pytest.fixture
def world(rapi):
    owner = rapi.new_user()
    return owner, rapi.new_workspace(owner)


def status(api: Api, key: str, ws: dict) -> dict:
    result = api.call("GET", f"/workspaces/{ws['id']}/rate-limits", key)
    assert result.status_code == 200, result.text
    responses.RateLimitStatusShape.model_validate(result.json)
    return result.json


def check(api: Api, ws: dict, cost: int | None = None):
    result = api.operator("POST", f"/workspaces/{ws['id']}/rate-limits/check",
                          json={} if cost is None else {"cost": cost})
    assert result.status_code == 200, result.text
    responses.RateLimitDecisionShape.model_validate(result.json)
    return result.json


def storm(api: Api, workspaces: list[dict], count: int) -> list[bool]:
    """`count` checks released together, spread over the workspaces; who was allowed."""
    start = threading.Barrier(50)

    def one(i):
        if i < 50:
            start.wait(timeout=10)
        return check(api, workspaces[i % len(workspaces)])["allowed"]
    with ThreadPoolExecutor(50) as pool:
        return list(pool.map(one, range(count)))


def test_a_new_workspace_is_free_and_reading_its_status_consumes_nothing(rapi, world):
    owner, ws = world
    first = status(rapi, owner.key, ws)
    assert (first["tier"], first["reason"], first["limits"], first["remaining"], first["resetSeconds"]) == (
        "free", "paid < 500", {"requestsPerMinute": 60}, 60, 0)
    assert first["billingAccountId"] == ws["defaultBillingAccountId"] and first["computedAt"].endswith("Z")
    assert status(rapi, owner.key, ws)["remaining"] == 60


def test_200_concurrent_checks_against_a_limit_of_60_allow_exactly_60(rapi, world):
    owner, ws = world
    assert storm(rapi, [ws], 200).count(True) == 60
    after = status(rapi, owner.key, ws)
    assert after["remaining"] == 0 and 1 <= after["resetSeconds"] <= 60
    denied = check(rapi, ws)
    assert (denied["allowed"], denied["limit"], denied["remaining"], denied["tier"]) == (False, 60, 0, "free")


def test_two_workspaces_on_one_account_share_its_budget(rapi, world):
    owner, first = world
    second = rapi.new_workspace(owner, "Second", billingAccountId=owner.default_account_id)
    other = rapi.new_workspace(rapi.new_user("Bo"))
    assert storm(rapi, [first, second], 100).count(True) == 60
    assert status(rapi, owner.key, second)["remaining"] == 0
    assert check(rapi, other)["allowed"] is True  # another account keeps its own budget


def test_a_cost_consumes_that_many_and_a_cost_beyond_what_is_left_consumes_nothing(rapi, world):
    owner, ws = world
    assert (check(rapi, ws, 50)["allowed"], check(rapi, ws, 11)["allowed"], check(rapi, ws, 10)["remaining"]) == (
        True, False, 0)
    assert check(rapi, ws, 61)["allowed"] is False
    assert_problem(rapi.operator("POST", f"/workspaces/{ws['id']}/rate-limits/check", json={"cost": 0}), 422)
    assert_problem(rapi.operator("POST", f"/workspaces/{ws['id']}/rate-limits/check", json={"cost": "1"}), 422)
    assert_problem(rapi.call("POST", f"/workspaces/{ws['id']}/rate-limits/check", owner.key, json={}), 403)


def test_switching_the_default_account_switches_the_tier_at_once(rapi, services, world, queue):
    owner, ws = world
    paid = new_linked_account(rapi, owner, ws["id"], "Paid")
    post(services, paid["id"], 700, kind="stripe_topup")
    empty = new_linked_account(rapi, owner, ws["id"], "Empty")
    assert check(rapi, ws)["tier"] == "free"

    switched = rapi.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{paid['id']}/default", owner.key)
    assert switched.status_code == 200
    now = status(rapi, owner.key, ws)
    assert (now["tier"], now["reason"], now["billingAccountId"], now["remaining"]) == (
        "tier1", "paid >= 500", paid["id"], 600)
    assert ("tiers.recompute", {"account_id": paid["id"]}) in queue.sent
    assert check(rapi, ws)["limit"] == 600

    rapi.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{empty['id']}/default", owner.key)
    assert (status(rapi, owner.key, ws)["tier"], check(rapi, ws)["limit"]) == ("restricted", 10)


def test_a_top_up_moves_the_tier_once_the_recompute_task_runs(rapi, services, world, queue):
    owner, ws = world
    account_id = ws["defaultBillingAccountId"]
    assert status(rapi, owner.key, ws)["tier"] == "free"
    post(services, account_id, 499, kind="stripe_topup")
    services.rate_limits.recompute(account_id)
    assert status(rapi, owner.key, ws)["tier"] == "free"
    post(services, account_id, 1, kind="x402_topup")
    assert status(rapi, owner.key, ws)["tier"] == "free"  # stored until the task recomputes it
    services.rate_limits.recompute(account_id)
    assert status(rapi, owner.key, ws)["tier"] == "tier1"
    post(services, account_id, -100, kind="refund", allow_negative=True)
    services.rate_limits.recompute(account_id)
    assert (status(rapi, owner.key, ws)["tier"], status(rapi, owner.key, ws)["reason"]) == ("free", "paid < 500")


def test_usage_down_to_zero_restricts_the_workspace(rapi, services, world, queue):
    owner, ws = world
    op = rapi.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json={"events": [
        {"eventId": "all", "metric": "tokens", "quantity": 1, "amountCents": 1000}]}).json
    services.operations.apply(op["id"])
    for name, kwargs in list(queue.sent):
        if name == "tiers.recompute":
            services.rate_limits.recompute(**kwargs)
    now = status(rapi, owner.key, ws)
    assert (now["tier"], now["reason"], now["limits"]["requestsPerMinute"]) == ("restricted", "balance <= 0", 10)


def test_refresh_is_an_operation_whose_result_is_the_new_status(rapi, services, world, queue):
    owner, ws = world
    member = rapi.new_user("Mem")
    rapi.add_member(owner, ws["id"], member)
    post(services, ws["defaultBillingAccountId"], 5_000, kind="stripe_topup")
    accepted = rapi.call("POST", f"/workspaces/{ws['id']}/rate-limits/refresh", owner.key)
    assert accepted.status_code == 202 and accepted.json["kind"] == "tier_refresh", accepted.text
    assert ("tiers.apply_operation", {"operation_id": accepted.json["id"]}) in queue.sent
    services.operations.apply(accepted.json["id"])
    done = rapi.call("GET", accepted.headers["Location"], owner.key).json
    assert done["status"] == "succeeded"
    responses.RateLimitStatusShape.model_validate(done["result"])
    assert (done["result"]["tier"], done["result"]["reason"]) == ("tier2", "paid >= 5000")
    assert status(rapi, member.key, ws)["tier"] == "tier2"
    assert rapi.operator("POST", f"/workspaces/{ws['id']}/rate-limits/refresh").status_code == 202
    assert_problem(rapi.call("POST", f"/workspaces/{ws['id']}/rate-limits/refresh", member.key), 403)
    assert_problem(rapi.call("GET", f"/workspaces/{ws['id']}/rate-limits", rapi.new_user("Eve").key), 404)


def test_the_beat_job_refreshes_tiers_older_than_the_configured_age_or_behind_the_ledger(rapi, services,
                                                                                      world, engine):
    owner, ws = world
    account_id = ws["defaultBillingAccountId"]
    status(rapi, owner.key, ws)
    post(services, account_id, 600, kind="stripe_topup")  # no recompute queued: the message was "lost"
    assert services.rate_limits.refresh_stale() >= 1
    assert status(rapi, owner.key, ws)["tier"] == "tier1"


def test_the_api_key_limit_adds_headers_and_answers_429_with_retry_after_past_it(engine, queue, limiter):
    api = build_api(engine, queue, limiter, api_rate_limit=5)
    owner, other = api.new_user(), api.new_user("Bo")
    answers = [api.call("GET", "/users/me", owner.key) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
    assert {a.headers["RateLimit-Limit"] for a in answers} == {"5"}
    assert 1 <= int(answers[-1].headers["RateLimit-Reset"]) <= 60
    refused = api.call("GET", "/users/me", owner.key)
    assert_problem(refused, 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and refused.headers["RateLimit-Remaining"] == "0"
    missing = api.call("GET", f"/workspaces/ws_{'0' * 32}", other.key)  # errors carry the headers too
    assert missing.status_code == 404 and missing.headers["RateLimit-Remaining"] == "4"
    exempt = [api.operator("GET", f"/workspaces/ws_{'0' * 32}") for _ in range(8)]
    assert {e.status_code for e in exempt} == {404} and "RateLimit-Limit" not in exempt[0].headers
    assert "RateLimit-Limit" not in api.client.simulate_get("/health").headers


def test_a_read_that_checks_its_own_key_is_one_round_trip_and_still_answers_unknown_keys_401(engine, queue,
                                                                                             limiter):
    """Balance, transaction and usage overview reads check a user's key in their own statement (api.auth's
    KeyHolder): one unit of work, and an unknown or revoked key is 401 before a 422 or 429, without RateLimit
    headers."""
    units = []

    def read():
        units.append("read")
        return UnitOfWork(engine)
    services = Services(Context(uow=lambda: units.append("uow") or UnitOfWork(engine), read=read, enqueue=queue,
                                config=Config(), limiter=limiter))
    api = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {}, api_rate_limit=5)))
    owner = api.new_user()
    ws = api.new_workspace(owner)
    balance, transactions = f"/workspaces/{ws['id']}/billing/balance", f"/workspaces/{ws['id']}/billing/transactions"
    overview = f"/workspaces/{ws['id']}/billing/usage-overview"
    units.clear()
    read_ok = api.call("GET", balance, owner.key)
    assert read_ok.status_code == 200 and read_ok.json["balanceCents"] == 1000
    assert units == ["read"] and read_ok.headers["RateLimit-Remaining"] == "3"
    units.clear()
    overview_ok = api.call("GET", overview, owner.key)
    assert overview_ok.status_code == 200 and overview_ok.json["billingAccountId"] == ws["defaultBillingAccountId"]
    assert units == ["read"] and overview_ok.headers["RateLimit-Remaining"] == "2"
    unknown = "bk_" + uuid.uuid4().hex
    for path in (balance, overview) * 3:  # the sixth is past the unknown key's limit of 5: still 401, not 429
        refused = api.call("GET", path, unknown)
        assert_problem(refused, 401)
        assert "RateLimit-Limit" not in refused.headers and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(api.call("GET", transactions + "?limit=0", "bk_" + uuid.uuid4().hex), 401)
    assert_problem(api.call("GET", transactions + "?cursor=nope", "bk_" + uuid.uuid4().hex), 401)
    assert_problem(api.call("GET", overview + "?granularity=week", "bk_" + uuid.uuid4().hex), 401)
    assert_problem(api.call("GET", overview + "?from=2026-01-01T00:00:00Z&granularity=hour&to=2026-03-01T00:00:00Z",
                            "bk_" + uuid.uuid4().hex), 401)  # refused by the service's window check
    assert_problem(api.call("GET", transactions + "?limit=0", owner.key), 422)
    assert_problem(api.call("GET", overview + "?granularity=week", owner.key), 422)
    assert_problem(api.call("GET", transactions, owner.key), 429)  # the owner's limit of 5 is spent
    with engine.begin() as conn:
        assert users_store.revoke_keys(conn, owner.id) == 1
    assert_problem(api.call("GET", balance, owner.key), 401)  # past the limit, and revoked: 401 first
    assert_problem(api.call("GET", overview, owner.key), 401)
    assert api.operator("GET", balance).json["balanceCents"] == 1000


def test_a_limit_of_zero_turns_the_api_key_limit_off(rapi):
    owner = rapi.new_user()
    assert "RateLimit-Limit" not in rapi.call("GET", "/users/me", owner.key).headers


class CountingRedis(redis.Redis):
    """Counts the commands this client sends: a decision should be one round trip."""

    sent = 0

    def execute_command(self, *args, **options):
        self.sent += 1
        return super().execute_command(*args, **options)


class RestartedRedis(CountingRedis):
    """Answers the first EVALSHA with NOSCRIPT, as a Redis restarted since the script was loaded would."""

    commands: list[str]

    def execute_command(self, *args, **options):
        self.commands = getattr(self, "commands", []) + [args[0]]
        if self.commands == ["EVALSHA"]:
            raise redis.exceptions.NoScriptError("No matching script. Please use EVAL.")
        return super().execute_command(*args, **options)


def test_a_redis_that_lost_the_script_is_sent_it_again_and_the_decision_stands(shared_redis):
    pool, prefix = shared_redis
    client = RestartedRedis(connection_pool=pool)
    made = RedisLimiter(client, prefix)
    first = made.hit("account:r", 5)
    assert (first.allowed, first.remaining, client.commands) == (True, 4, ["EVALSHA", "SCRIPT LOAD", "EVALSHA"])
    assert made.hit("account:r", 5).remaining == 3 and client.commands[3:] == ["EVALSHA"]


def uses(client: redis.Redis, key: str, *ages: float) -> None:
    """Put uses of these ages (seconds ago) in the key's window, newest first, as the limiter keeps them."""
    now = time.time()
    if ages:
        client.lpush(key, *[repr(now - age) for age in sorted(ages, reverse=True)])


def test_a_decision_is_one_redis_round_trip_that_also_answers_remaining_and_reset(shared_redis):
    pool, prefix = shared_redis
    client = CountingRedis(connection_pool=pool)
    made = RedisLimiter(client, prefix)
    first = made.hit("account:a", 5)
    assert (first.allowed, first.limit, first.remaining, first.reset_seconds) == (True, 5, 4, 60)
    client.sent = 0  # the first call also loaded the script
    decisions = [made.hit("account:a", 5, cost) for cost in (3, 2, 1)]
    assert client.sent == 3
    assert [(d.allowed, d.remaining) for d in decisions] == [(True, 1), (False, 1), (True, 0)]
    assert all(59 <= d.reset_seconds <= 60 for d in decisions)


@pytest.mark.parametrize("old, recent", [(0, 0), (0, 1), (1, 0), (1, 1), (30, 7), (7, 30), (99, 1), (0, 100)])
def test_the_window_holds_only_the_last_60_seconds_and_counts_as_limits_does(shared_redis, old, recent):
    pool, prefix = shared_redis
    made = RedisLimiter(redis.Redis(connection_pool=pool), prefix)
    uses(redis.Redis(connection_pool=pool), f"{prefix}:account:w", *[200 - i for i in range(old)], *[50 - i * 0.1 for i in range(recent)])
    peeked = made.peek("account:w", 100)
    _, counted = RedisStorage(REDIS_URL, connection_pool=pool, key_prefix=prefix).get_moving_window(
        "account:w", 100, 60)
    assert peeked.remaining == 100 - recent == 100 - counted
    assert peeked.reset_seconds in ((9, 10) if recent else (0,))  # the oldest recent use is 50 s old
    hit = made.hit("account:w", 100)
    assert (hit.allowed, hit.remaining) == ((True, 99 - recent) if recent < 100 else (False, 0))


def test_a_lower_limit_counts_only_as_many_uses_as_it_allows_and_a_big_cost_fits_once(shared_redis):
    pool, prefix = shared_redis
    made = RedisLimiter(redis.Redis(connection_pool=pool), prefix)
    assert made.hit("account:t", 600, 50).remaining == 550  # a tier1 account that then became restricted
    downgraded = made.hit("account:t", 10)
    assert (downgraded.allowed, downgraded.limit, downgraded.remaining) == (False, 10, 0)
    too_big = made.hit("account:fresh", 10, 11)
    assert (too_big.allowed, too_big.remaining, too_big.reset_seconds) == (False, 10, 0)  # nothing consumed
    assert made.hit("account:big", 10_000, 6_000).remaining == 4_000  # pushed in chunks (Lua's unpack is bounded)


def test_the_memory_limiter_of_a_standalone_process_decides_as_the_redis_one(shared_redis):
    pool, prefix = shared_redis
    limiters = [RedisLimiter(redis.Redis(connection_pool=pool), prefix), memory_limiter()]
    steps = [("a", 5, 3), ("a", 5, 3), ("a", 5, 2), ("a", 5, 1), ("b", 5, 6), ("b", 5, 5), ("a", 2, 1)]
    runs = [[(d.allowed, d.limit, d.remaining) for d in (made.hit(f"account:{k}", n, c) for k, n, c in steps)]
            for made in limiters]
    assert runs[0] == runs[1] == [(True, 5, 2), (False, 5, 2), (True, 5, 0), (False, 5, 0), (False, 5, 5),
                                  (True, 5, 0), (False, 2, 0)]
    assert all(made.peek("account:a", 5).reset_seconds in (59, 60) for made in limiters)


def test_a_default_switched_in_one_process_moves_the_very_next_check_in_another(rapi, world, services, database_url,
                                                                                 queue, shared_redis):
    """Two API processes (own engine, own limiter, nothing shared but PostgreSQL and Redis) and a worker."""
    owner, ws = world
    other_limiter, other_pool, _ = make_limiter(REDIS_URL, prefix=shared_redis[1])  # the same keys as rapi's
    other_engine = make_engine(database_url, pool_size=2)
    other = build_api(other_engine, queue, other_limiter)
    paid = new_linked_account(rapi, owner, ws["id"], "Paid")
    post(services, paid["id"], 700, kind="stripe_topup")
    assert (check(other, ws)["tier"], check(other, ws)["remaining"]) == ("free", 58)

    switched = rapi.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{paid['id']}/default", owner.key)
    assert switched.status_code == 200
    now = check(other, ws)
    assert (now["tier"], now["limit"], now["remaining"]) == ("tier1", 600, 599)  # the paid account's own budget

    post(services, paid["id"], -300, kind="refund", allow_negative=True)
    services.rate_limits.recompute(paid["id"])  # the worker's task, after the refund
    assert (check(other, ws)["tier"], check(other, ws)["limit"]) == ("free", 60)

    rapi.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{ws['defaultBillingAccountId']}/default", owner.key)
    back = check(other, ws)
    assert (back["tier"], back["remaining"]) == ("free", 57)  # the first account's budget, as it was left
    other_engine.dispose()
    other_pool.disconnect()


def test_a_database_connection_lost_under_a_check_answers_503_once_and_the_next_check_reconnects(
        database_url, queue, limiter, engine, monkeypatch):
    monkeypatch.setattr(uow_module, "IDLE_PING_SECONDS", 3600)  # no ping to notice the loss first
    name = f"rl-{uuid.uuid4().hex[:12]}"
    own = make_engine(f"{database_url}?application_name={name}", pool_size=1)
    api = build_api(own, queue, limiter)
    ws = api.new_workspace(api.new_user())
    assert check(api, ws)["allowed"] is True
    with engine.connect() as conn:
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = :name"), {"name": name}).scalar()
    assert killed == 1
    lost = api.operator("POST", f"/workspaces/{ws['id']}/rate-limits/check", json={})
    assert_problem(lost, 503)
    assert check(api, ws)["remaining"] == 58
    own.dispose()


@pytest.fixture
def dead_redis(tmp_path):
    """A private redis-server that the test stops (or freezes); the shared one is never touched."""
    server = RedisServer(tmp_path)
    yield server
    server.thaw()
    server.stop()


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_with_redis_down_failing_open_allows_and_never_answers_500(engine, queue, dead_redis, outage):
    made, pool, _ = make_limiter(dead_redis.url, fail_open=True)
    api = build_api(engine, queue, made, api_rate_limit=5)
    owner = api.new_user()
    ws = api.new_workspace(owner)
    dead_redis.stop() if outage == "stopped" else dead_redis.freeze()
    assert check(api, ws)["allowed"] is True
    assert status(api, owner.key, ws)["tier"] == "free"
    answers = [api.call("GET", "/users/me", owner.key) for _ in range(8)]
    assert {a.status_code for a in answers} == {200}
    assert made.unavailable_total >= 10
    pool.disconnect()


def test_with_redis_down_failing_closed_refuses_decisions_and_answers_503(engine, queue, dead_redis):
    made, pool, _ = make_limiter(dead_redis.url, fail_open=False)
    api = build_api(engine, queue, made, api_rate_limit=5)
    owner = api.new_user()  # the operator is exempt from the API limit, so this works while Redis is down too
    ws = api.new_workspace(owner)
    dead_redis.stop()
    decision = check(api, ws)
    assert (decision["allowed"], decision["remaining"]) == (False, 0)
    refused = api.call("GET", "/users/me", owner.key)
    assert_problem(refused, 503)
    assert refused.headers["Retry-After"] == "1"
    assert made.unavailable_total >= 2
    pool.disconnect()
