"""Stripe and metrics as deployed: the served API, a real worker and Redis, Stripe's SDK against a stand-in."""
import json

import pytest
import requests

from tests.factories import prometheus_samples
from tests.processes import Stack, assert_sound, free_port, wait_until
from tests.standins.stripe_api import signed_event

SECRET = "whsec_flow_secret"


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, stripe_api):
    stack = Stack(database_url, tmp_path_factory.mktemp("stripe-stack"))
    stack.metrics_port = free_port()
    stack.env.update(STRIPE_API_KEY="sk_test_flow", STRIPE_WEBHOOK_SECRET=SECRET, STRIPE_API_BASE=stripe_api.url,
                     WORKER_METRICS_PORT=str(stack.metrics_port))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _worker_metrics(stack) -> dict[str, float]:
    return prometheus_samples(requests.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text)


def test_a_paid_checkout_is_credited_by_the_worker_once_however_often_stripe_calls(stack, stripe_api, services):
    api = stack.api
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    created = api.call("POST", f"/workspaces/{workspace['id']}/billing/checkout", owner.key,
                       json={"amountCents": 1999, "successUrl": "https://app.example/ok",
                             "cancelUrl": "https://app.example/no"})
    assert created.status_code == 201, created.text
    checkout = created.json
    payload, signature = signed_event(SECRET, "checkout.session.completed", stripe_api.pay(checkout["stripeSessionId"]))
    for _ in range(3):
        delivered = api.call("POST", "/webhooks/stripe", body=payload,
                             headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
        assert delivered.status_code == 200

    path = f"/workspaces/{workspace['id']}/billing/checkouts/{checkout['id']}"
    done = wait_until(lambda: (lambda c: c if c["status"] != "pending" else None)(api.call("GET", path, owner.key).json),
                      30, "the worker to apply the Stripe event")
    assert done["status"] == "completed"
    assert api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json["balanceCents"] == 2999
    kinds = [t["kind"] for t in api.call("GET", f"/workspaces/{workspace['id']}/billing/transactions", owner.key).json["data"]]
    assert kinds.count("stripe_topup") == 1
    assert_sound(services, workspace["defaultBillingAccountId"])


def test_the_worker_and_the_api_export_metrics_that_move_with_a_credit(stack, services):
    api = stack.api
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    # The session's database may hold credits other tests queued and never applied (their queue a recorder):
    # the worker drains every queued credit when woken, so a first credit is waited for, and the counters are
    # read after it, when nothing else is left to drain.
    primer = api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits", json={"amountCents": 1})
    wait_until(lambda: api.operator("GET", f"/operations/{primer.json['id']}").json["status"] == "succeeded", 30,
               "the first credit")
    before = _worker_metrics(stack)
    posted = api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits", json={"amountCents": 42},
                          headers={"X-Request-Id": "flow-trace-42"})
    assert posted.status_code == 202 and posted.headers["X-Request-Id"] == "flow-trace-42"
    applied = 'billing_tasks_total{event="succeeded",task="ledger.apply_operation"}'
    wait_until(lambda: _worker_metrics(stack).get(applied, 0) > before.get(applied, 0), 30, "the worker's metrics")
    after = _worker_metrics(stack)
    cents = 'billing_ledger_posted_cents_total{direction="credit",kind="credit_grant"}'
    assert after.get(cents, 0) - before.get(cents, 0) == 42
    assert after.get('billing_task_duration_seconds_count{task="ledger.apply_operation"}', 0) > 0
    task_lines = [json.loads(line) for line in stack.worker.output().splitlines() if "flow-trace-42" in line]
    assert any(line.get("operation_id") == posted.json["id"] and line["request_id"] == "flow-trace-42"
               for line in task_lines), "the worker's log lines carry the request and operation ids"
    served = prometheus_samples(api.call("GET", "/metrics").text)
    assert served.get('billing_http_requests_total{method="POST",route="/workspaces/{workspace_id}/billing/credits",status="202"}', 0) >= 1
    assert 'billing_queue_depth{queue="ledger"}' in served and 'billing_outbox_operations{status="queued"}' in served
