"""Clients that send part of a request body and then nothing: the API behind deploy/nginx.conf (the proxy
docker-compose.yml puts in front of it) keeps answering everyone else, and hangs up on the silent clients.

granian hands a request to an app thread once its headers arrive and has no body read timeout, so each such client
holds an API thread until it hangs up. nginx runs here with that very file, its upstream and port pointed at this
stack's API and its body timeout shortened to keep the test short. nginx comes from Debian's `nginx-light`
(.ci/run installs it when missing)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.factories import OPERATOR_TOKEN
from tests.processes import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get install -y --no-install-recommends nginx-light"
BODY_TIMEOUT_SECONDS = 2


def _nginx(tmp_path: Path, api_port: int) -> tuple[subprocess.Popen, int]:
    """nginx serving deploy/nginx.conf on a free port in front of the API on api_port."""
    binary = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if binary is None:
        pytest.fail(f"nginx is not installed: `{INSTALL}`")
    port = free_port()
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site, upstreams = re.subn(r"server api:8000;", f"server 127.0.0.1:{api_port};", site)
    site, listens = re.subn(r"listen 8000;", f"listen 127.0.0.1:{port};", site)
    site, timeouts = re.subn(r"client_body_timeout \d+s;", f"client_body_timeout {BODY_TIMEOUT_SECONDS}s;", site)
    assert (upstreams, listens, timeouts) == (1, 1, 1), "deploy/nginx.conf no longer has the lines this test points"
    (tmp_path / "site.conf").write_text(site)
    temp = tmp_path / "nginx-temp"
    temp.mkdir()
    (tmp_path / "nginx.conf").write_text(f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp_path}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {tmp_path}/site.conf;
}}
""")
    output = tmp_path / "nginx-output.log"
    with output.open("wb") as log:
        process = subprocess.Popen([binary, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], stdout=log,
                                   stderr=subprocess.STDOUT)
    wait_until(lambda: process.poll() is not None or _answers(port), 30, "nginx")
    assert process.poll() is None, output.read_text()
    return process, port


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _silent_client(port: int) -> socket.socket:
    """A connection that sent a user's creation with 9 bytes of a 1000-byte body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /users HTTP/1.1\r\nHost: billing\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"email\":".encode())
    return sock


def test_clients_silent_mid_body_hold_no_api_thread_behind_the_proxy_and_are_hung_up_on(stack, tmp_path):
    stack.start(worker=False)  # granian, 1 worker x 8 threads
    api_port = int(stack.api.client.base_url.rsplit(":", 1)[1])
    nginx, port = _nginx(tmp_path, api_port)
    silent = [_silent_client(port) for _ in range(12)]  # more than the API's threads
    try:
        time.sleep(0.5)
        started = time.monotonic()
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        created = requests.post(f"http://127.0.0.1:{port}/users", json={"email": "through-the-proxy@example.com"},
                                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=5)
        assert created.status_code == 201, created.text
        assert time.monotonic() - started < 2, "the API answered slowly beside the silent clients"
        for sock in silent:  # nginx closes each silent client's connection after the body timeout (its 408)
            sock.settimeout(BODY_TIMEOUT_SECONDS + 5)
            assert sock.recv(200) == b"", "a silent client's connection was left open"
        timed_out = (tmp_path / "nginx-access.log").read_text().count('"POST /users HTTP/1.1" 408 ')
        assert timed_out == len(silent), "nginx did not log a 408 for each silent client"
    finally:
        for sock in silent:
            sock.close()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)


def test_a_body_past_the_proxys_limit_and_an_api_that_is_down_are_answered_as_problems(stack, tmp_path):
    stack.start(worker=False)
    api_port = int(stack.api.client.base_url.rsplit(":", 1)[1])
    nginx, port = _nginx(tmp_path, api_port)
    try:
        too_large = requests.post(f"http://127.0.0.1:{port}/users", data=b"{" + b" " * (1 << 20) + b"}",
                                  headers={"Authorization": f"Bearer {OPERATOR_TOKEN}",
                                           "Content-Type": "application/json"}, timeout=10)
        assert (too_large.status_code, too_large.headers["Content-Type"]) == (413, "application/problem+json")
        assert too_large.json()["status"] == 413
        stack.stop()
        down = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert (down.status_code, down.headers["Content-Type"], down.headers["Retry-After"]) == (
            503, "application/problem+json", "5")
        assert down.json()["title"] == "Service Unavailable"
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)
