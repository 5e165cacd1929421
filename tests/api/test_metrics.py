"""GET /metrics: the counters move by exactly what a flow did."""

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from api.metrics import MetricsPort
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.factories import OPERATOR_TOKEN, Api, prometheus_samples
from worker import metrics


@pytest.fixture
def mapi(engine, queue):
    services = Services(Context(uow=lambda: UnitOfWork(engine, on_postings=metrics.observe_postings),
                                enqueue=queue, config=Config()))
    port = MetricsPort(metrics.observe_request, lambda: metrics.render(lambda: metrics.gauges(services, None)))
    return Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {}, metrics=port))), services


def _scrape(api: Api) -> dict[str, float]:
    result = api.call("GET", "/metrics")
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/plain")
    return prometheus_samples(result.text)


def _delta(before: dict, after: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _credit_grants(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT count(*), COALESCE(sum(amount_cents), 0) FROM ledger_entries "
                                       "WHERE kind = 'credit_grant'")).one())


def test_a_credit_flow_moves_request_posting_and_backlog_metrics_by_the_right_amounts(mapi, queue, engine):
    api, services = mapi
    before = _scrape(api)
    grants_before = _credit_grants(engine)
    user = api.new_user()
    ws = api.new_workspace(user)
    op = api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": 250}).json
    middle = _scrape(api)
    assert _delta(before, middle, 'billing_outbox_operations{status="queued"}') == 1
    services.operations.apply(op["id"])
    api.call("GET", f"/workspaces/{ws['id']}/billing/balance", user.key)
    api.call("GET", f"/workspaces/{ws['id']}/billing/balance", user.key)
    after = _scrape(api)
    assert _delta(before, after, 'billing_ledger_postings_total{kind="intro_credit"}') == 1
    assert _delta(before, after, 'billing_ledger_posted_cents_total{direction="credit",kind="intro_credit"}') == 1000
    # the worker may apply other queued credits in the same batch: count what was committed meanwhile
    grants = [a - b for a, b in zip(_credit_grants(engine), grants_before)]
    assert grants[0] >= 1 and grants[1] >= 250
    assert _delta(before, after, 'billing_ledger_postings_total{kind="credit_grant"}') == grants[0]
    assert _delta(before, after, 'billing_ledger_posted_cents_total{direction="credit",kind="credit_grant"}') == grants[1]
    assert _delta(middle, after, 'billing_outbox_operations{status="queued"}') == -grants[0]
    route = 'billing_http_requests_total{method="GET",route="/workspaces/{workspace_id}/billing/balance",status="200"}'
    assert _delta(before, after, route) == 2
    assert _delta(before, after, 'billing_http_requests_total{method="POST",route="/users",status="201"}') == 1


def test_a_repeated_posting_is_not_counted_twice(mapi):
    api, services = mapi
    user = api.new_user()
    before = _scrape(api)
    services.users.provision_default(user.id)  # the intro credit exists: nothing is posted
    assert _delta(before, _scrape(api), 'billing_ledger_postings_total{kind="intro_credit"}') == 0


def test_rate_limit_decisions_are_counted_allowed_and_denied():
    from domain.ratelimit import Decision, FailurePolicy

    class Always:
        def __init__(self, allowed):
            self.allowed = allowed

        def hit(self, key, per_minute, cost=1):
            return Decision(allowed=self.allowed, limit=per_minute, remaining=0, reset_seconds=1)

    counter = metrics.RATE_LIMIT_DECISIONS
    allowed_before = counter.labels("allowed", "ok")._value.get()
    denied_before = counter.labels("denied", "ok")._value.get()
    FailurePolicy(Always(True), on_decision=metrics.observe_decision).hit("k", 5)
    FailurePolicy(Always(False), on_decision=metrics.observe_decision).hit("k", 5)
    FailurePolicy(Always(False), on_decision=metrics.observe_decision).hit("k", 5)
    assert counter.labels("allowed", "ok")._value.get() - allowed_before == 1
    assert counter.labels("denied", "ok")._value.get() - denied_before == 2


def test_with_a_metrics_token_only_a_scraper_sending_it_reads_the_metrics(engine, queue):
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config()))
    port = MetricsPort(metrics.observe_request, lambda: metrics.render(lambda: metrics.gauges(services, None)),
                       token="scrape-secret")
    api = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {}, metrics=port)))
    for key in (None, "wrong", OPERATOR_TOKEN):
        refused = api.call("GET", "/metrics", key)
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
        assert "billing_" not in refused.text
    allowed = api.call("GET", "/metrics", "scrape-secret")
    assert allowed.status_code == 200 and "billing_http_requests" in allowed.text


def test_the_worker_metrics_port_asks_for_the_same_token():
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(port, token="scrape-secret")
    url = f"http://127.0.0.1:{port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
            raise AssertionError("served without the token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    with urllib.request.urlopen(urllib.request.Request(
            url, headers={"Authorization": "Bearer scrape-secret"}), timeout=5) as answer:
        assert answer.status == 200 and b"billing_" in answer.read()
