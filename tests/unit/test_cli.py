"""The `billing` command's operator tools: help for each, and wrong arguments refused in one line."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.processes import ROOT
from worker.cli import main, parser
from worker.processes import api_argv, flower_argv

OPERATOR_COMMANDS = [["audit"], ["relay"], ["reconcile"], ["credit"], ["tiers"], ["tiers", "refresh"], ["flower"],
                     ["grants"], ["expire"], ["holds"], ["holds", "list"], ["holds", "release"], ["holds", "expire"]]


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_every_operator_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    assert f"usage: billing {' '.join(command)}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, complaint", [
    (["credit", "ws_1", "12.5"], "AMOUNT_CENTS must be a whole number from 1 to 100000000"),
    (["credit", "ws_1", "0"], "AMOUNT_CENTS must be a whole number"),
    (["credit", "ws_1", "100000001"], "AMOUNT_CENTS must be a whole number"),
    (["credit", "ws_1", "5", "--idempotency-key", ""], "must be 1 to 255 printable characters"),
    (["credit", "ws_1", "5", "--description", "x" * 501], "must be 0 to 500 printable characters"),
    (["tiers", "refresh"], "one of the arguments WORKSPACE_ID --all is required"),
    (["tiers", "refresh", "ws_1", "--all"], "not allowed with argument WORKSPACE_ID"),
    (["reconcile", "--provider", "paypal"], "invalid choice: 'paypal'"),
    (["reconcile", "--older-than", "-5"], "--older-than must be a whole number"),
    (["grants", "ws_1", "--status", "open"], "invalid choice: 'open'"),
    (["holds", "release", "ws_1"], "the following arguments are required: HOLD_ID"),
    (["holds"], "required: holds_command"),
])
def test_wrong_arguments_are_refused_with_usage_and_one_reason(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_missing_setting_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr("worker.container._built", {})
    assert main(["credit", "ws_1", "5"]) == 2
    assert capsys.readouterr().err == "billing: configuration error: DATABASE_URL is not set\n"


def test_flower_keeps_nothing_on_disk_unless_given_a_state_directory():
    assert "--persistent=False" in flower_argv(5555, "0.0.0.0")
    kept = flower_argv(5555, "0.0.0.0", "/var/lib/flower")
    assert "--persistent=True" in kept and "--db=/var/lib/flower/flower-state" in kept
    assert "--enable_events=False" in kept  # the workers send task events by their own configuration


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("env, seconds", [({}, "75"), ({"BILLING_HTTP_KEEPALIVE_SECONDS": "120"}, "120"),
                                          ({"BILLING_HTTP_KEEPALIVE_SECONDS": "0"}, "0")])
def test_the_api_keeps_idle_connections_open_for_the_configured_seconds(monkeypatch, env, seconds):
    started = []
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/billing")
    monkeypatch.setenv("BILLING_OPERATOR_TOKEN", "token")
    monkeypatch.delenv("BILLING_HTTP_KEEPALIVE_SECONDS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("os.execv", lambda path, argv: started.append(argv))
    main(["api", "--port", "8080"])
    assert _option(started[0], "--keep-alive") == seconds
    assert _option(api_argv(8000, 2, 4, 90), "--keep-alive") == "90"
    assert _option(api_argv(8000, 2, 4), "--keep-alive") == "75"


@pytest.mark.parametrize("value", ["soon", "-1", "3601", "1.5"])
def test_a_bad_keepalive_setting_stops_the_api_with_one_line_naming_it(monkeypatch, capsys, value):
    monkeypatch.setenv("BILLING_HTTP_KEEPALIVE_SECONDS", value)
    monkeypatch.setattr("os.execv", lambda path, argv: pytest.fail("the API started"))
    assert main(["api"]) == 2
    assert capsys.readouterr().err == (f"billing: configuration error: BILLING_HTTP_KEEPALIVE_SECONDS={value!r} "
                                       "must be a whole number from 0 to 3600\n")


@pytest.fixture
def port_served_with_reuseport():
    """A port listened on as granian's workers listen on Linux (SO_REUSEPORT), which another such bind would share."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("command", [["-m", "worker.http_server", "--host", "127.0.0.1", "--port"],
                                     ["-m", "worker.cli", "standalone", "--port"]])
def test_a_server_on_a_port_already_listened_on_refuses_to_start(port_served_with_reuseport, command, tmp_path):
    """`billing api` (worker.http_server) and `billing standalone` say the port is taken and exit 1, before anything
    starts, rather than take a share of another server's connections."""
    server = subprocess.Popen([sys.executable, *command, str(port_served_with_reuseport)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    try:
        _, stderr = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it started: stop it and what it started
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)
        raise AssertionError(f"{command} started on a port another server listens on") from None
    assert server.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port_served_with_reuseport}: Address already in use" in stderr
    assert not (tmp_path / ".billing-data").exists()  # standalone started no database


# A SIGTERM handed to a thread other than the main one, whose handler only the main thread runs, while the main
# thread waits on a lock as a granian worker's does. It is sent once the main thread waits (its waiter is queued on
# the event's condition, and a moment more): sent earlier, the main thread would run the handler between two
# bytecodes before it waited, and the wait without forwarding would answer True (1 run in 20 on a busy machine).
SIGNAL_TO_ANOTHER_THREAD = """
import signal, threading, time
from worker.http_server import stop_signals_reach_the_main_thread
stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
if {forwarded}:
    stop_signals_reach_the_main_thread()
other = threading.Thread(target=threading.Event().wait, args=(10,), daemon=True)
other.start()

def signal_the_other_thread_once_the_main_one_waits():
    while not stopped._cond._waiters:
        time.sleep(0.01)
    time.sleep(0.2)
    signal.pthread_kill(other.ident, signal.SIGTERM)

threading.Thread(target=signal_the_other_thread_once_the_main_one_waits, daemon=True).start()
print(stopped.wait(3))
"""


@pytest.mark.parametrize("forwarded", [True, False])
def test_a_stop_signal_another_thread_catches_reaches_the_main_threads_handler_at_once(forwarded):
    """worker.http_server.stop_signals_reach_the_main_thread; without it the handler waits for the main thread to
    wake by itself (a granian worker's never does: tests/faults/test_graceful_shutdown.py)."""
    out = subprocess.run([sys.executable, "-c", SIGNAL_TO_ANOTHER_THREAD.format(forwarded=forwarded)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == str(forwarded), out.stderr


def test_stop_signals_leave_a_wakeup_fd_someone_else_set_alone():
    script = """
import os, signal, threading
from worker.http_server import stop_signals_reach_the_main_thread
theirs = os.pipe()[1]
os.set_blocking(theirs, False)
signal.set_wakeup_fd(theirs)
stop_signals_reach_the_main_thread()
print(signal.set_wakeup_fd(-1) == theirs, threading.active_count())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "1"], out.stderr
