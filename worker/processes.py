"""How each process of a deployment starts: the API's, worker's, beat's and Flower's command lines; migrate."""
import sys
from pathlib import Path

from worker import settings as settings_module
from worker.routing import QUEUES

CELERY_APP = "worker.celery_app"
ALL_QUEUES = ",".join(QUEUES)
# Every queue but webhooks: a deployment gives outbound webhooks workers of their own (receivers may take 10 s).
MONEY_QUEUES = ",".join(queue for queue in QUEUES if queue != "webhooks")
API_GRACEFUL_SECONDS = 20  # after SIGTERM, in-flight requests get this long (compose's stop_grace_period is longer)


def migrate(database_url: str, revision: str = "head") -> None:
    # Alembic and the migrations package are loaded only by the commands that migrate.
    from alembic import command
    from alembic.config import Config

    import migrations

    config = Config(str(Path(migrations.__file__).with_name("alembic.ini")))
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "postgres://", "postgresql+psycopg://", 1)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


def api_argv(port: int, workers: int, threads: int,
             keepalive_seconds: int = settings_module.Settings.http_keepalive_seconds,
             host: str = "0.0.0.0") -> list[str]:
    """granian (worker.http_server): idle kept-alive connections wait in its Rust runtime, not in a thread,
    so a long keep-alive costs a socket each, not a thread."""
    return [sys.executable, "-m", "worker.http_server", "--host", host, "--port", str(port),
            "--workers", str(workers), "--threads", str(threads), "--keep-alive", str(keepalive_seconds)]


def worker_argv(queues: str, concurrency: int, name: str = "worker@%h") -> list[str]:
    return [sys.executable, "-m", "worker.celery_main", "-A", CELERY_APP, "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--hostname", name, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]


def beat_argv(state_dir: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, "beat", "--loglevel", "INFO",
            "--schedule", str(Path(state_dir) / "celerybeat-schedule")]


def flower_argv(port: int, address: str, state_dir: str | None = None) -> list[str]:
    """Flower on the broker. Workers send task events by configuration, so Flower need not switch
    them on; its task history stays in memory unless a state directory is given."""
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "flower", f"--port={port}",
            f"--address={address}", "--enable_events=False", "--max_tasks=10000"]
    if state_dir:
        return argv + ["--persistent=True", f"--db={Path(state_dir) / 'flower-state'}",
                       "--state_save_interval=60000"]
    return argv + ["--persistent=False"]
