"""Structured request logs: one JSON line per request, a request id, and never an API key."""
import io
import json
import logging

import pytest

from worker.logs import json_handler


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    handler = json_handler(stream, "api")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_each_request_logs_one_json_line_with_route_status_duration_and_request_id(api, log_lines):
    user = api.new_user()
    result = api.call("GET", f"/billing-accounts/{user.default_account_id}/balance", user.key,
                      headers={"X-Request-Id": "trace-me-123"})
    assert result.headers["X-Request-Id"] == "trace-me-123"
    lines = [line for line in log_lines() if line["message"] == "request" and line["request_id"] == "trace-me-123"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["method"], line["route"], line["status"]) == ("GET", "/billing-accounts/{account_id}/balance", 200)
    assert line["duration_ms"] >= 0 and line["service"] == "api" and line["level"] == "INFO"


def test_a_request_id_is_generated_when_none_is_sent(api):
    first, second = api.call("GET", "/health"), api.call("GET", "/health")
    assert len(first.headers["X-Request-Id"]) == 32 and first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


def test_the_request_id_reaches_what_the_request_enqueues(api, queue):
    user = api.new_user()
    ws = api.new_workspace(user)
    api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": 5},
                 headers={"X-Request-Id": "credit-req-1"})
    assert queue.sent[-1][0] == "ledger.apply_operation" and queue.request_ids[-1] == "credit-req-1"


def test_api_keys_and_the_operator_token_never_appear_in_logs(api, log_lines):
    user = api.new_user()
    api.call("GET", "/users/me", user.key)
    api.call("GET", "/users/me", user.key + "x")  # an unknown key is not logged either
    text = json.dumps(log_lines())
    assert user.key not in text and "test-operator-token" not in text
