"""`billing standalone` with no DATABASE_URL or REDIS_URL: the README's run command, as a newcomer uses it."""
import json
import os
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
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "BILLING_OPERATOR_TOKEN")}
    log = open(tmp_path / "standalone.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "standalone", "--port", str(port),
                                "--data-dir", str(tmp_path / "data")], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: urllib.request.urlopen(base + "/health", timeout=2).status == 200, 120, "the API")
        yield base, (tmp_path / "data" / "operator-token").read_text().strip(), process, tmp_path / "data"
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
    base, operator, process, data = standalone
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
