"""`billing flower` on the stack's broker: the operator sees the worker and a finished credit task."""
import re
import sys

import pytest
import requests

from tests.processes import Process, free_port, wait_for_operations, wait_until

AUTH = ("ops", "flower-test-secret")


@pytest.fixture
def flower(stack):
    port = free_port()
    process = Process("flower", [sys.executable, "-m", "worker.cli", "flower", "--port", str(port),
                                 "--address", "127.0.0.1"],
                      stack.env | {"FLOWER_BASIC_AUTH": ":".join(AUTH)}, stack.log_dir)
    try:
        process.wait_for_output("Visit me at", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        print(process.output()[-3000:])
        process.stop()


def _get(url: str, **params) -> dict:
    answer = requests.get(url, params=params, auth=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _worker_name(stack) -> str:
    return re.search(r"([\w.-]+@[\w.-]+) ready\.", stack.worker.output())[1]


def test_flower_shows_the_worker_and_a_credit_task_it_finished(stack, flower, engine):
    assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401  # basic auth guards the API
    name = _worker_name(stack)
    workers = wait_until(lambda: (lambda w: w if name in w else None)(_get(f"{flower}/api/workers", refresh=1)),
                         30, f"Flower to list {name}")
    assert {q["name"] for q in workers[name]["active_queues"]} == {"ledger", "payments", "tiers", "maintenance",
                                                                              "webhooks"}

    owner = stack.api.new_user()
    workspace = stack.api.new_workspace(owner)
    posted = stack.api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits", json={"amountCents": 125})
    assert posted.status_code == 202, posted.text
    op_id = posted.json["id"]
    assert wait_for_operations(engine, [op_id]) == {op_id: "succeeded"}

    def finished_task():
        tasks = _get(f"{flower}/api/tasks", workername=name, state="SUCCESS", taskname="ledger.apply_operation")
        return next((t for t in tasks.values() if op_id in (t.get("kwargs") or "")), None)
    task = wait_until(finished_task, 20, f"Flower to show the task of {op_id} as finished")
    assert (task["name"], task["state"], task["worker"]) == ("ledger.apply_operation", "SUCCESS", name)
    assert task["sent"] and task["received"] and task["started"] and task["succeeded"], task  # API and worker events
    assert task["runtime"] is not None and task["runtime"] >= 0
