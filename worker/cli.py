"""The `billing` command: run the API, the worker, beat, or all of them at once; operator tools."""
import argparse
import json
import os
import sys
from pathlib import Path

from worker import settings as settings_module

CELERY_APP = "worker.celery_app"
ALL_QUEUES = "ledger,payments,tiers,maintenance"


def migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    import migrations

    config = Config(str(Path(migrations.__file__).with_name("alembic.ini")))
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "postgres://", "postgresql+psycopg://", 1)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")


def api_argv(port: int, workers: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "api.app:get_app()", "--bind", f"0.0.0.0:{port}",
            "--workers", str(workers), "--threads", str(threads), "--graceful-timeout", "20",
            "--access-logfile", "-", "--error-logfile", "-"]


def worker_argv(queues: str, concurrency: int, name: str = "worker@%h") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--hostname", name, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]


def beat_argv(state_dir: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, "beat", "--loglevel", "INFO",
            "--schedule", str(Path(state_dir) / "celerybeat-schedule")]


def _cmd_migrate(args, s) -> int:
    migrate(settings_module.require(s.database_url, "DATABASE_URL"))
    print("migrations applied")
    return 0


def _cmd_api(args, s) -> int:
    settings_module.require(s.database_url, "DATABASE_URL")
    settings_module.require(s.operator_token, "BILLING_OPERATOR_TOKEN")
    argv = api_argv(args.port or s.port, args.workers, args.threads)
    os.execv(argv[0], argv)


def _cmd_worker(args, s) -> int:
    settings_module.require(s.database_url, "DATABASE_URL")
    settings_module.require(s.broker_url, "REDIS_URL")
    argv = worker_argv(args.queues, args.concurrency)
    os.execv(argv[0], argv)


def _cmd_beat(args, s) -> int:
    settings_module.require(s.broker_url, "REDIS_URL")
    argv = beat_argv(args.state_dir)
    os.execv(argv[0], argv)


def _cmd_flower(args, s) -> int:
    settings_module.require(s.broker_url, "REDIS_URL")
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "flower", f"--port={args.port}",
            f"--address={args.address}"]
    os.execv(argv[0], argv)


def _cmd_standalone(args, s) -> int:
    from worker.standalone import run

    return run(s, port=args.port or s.port, data_dir=Path(args.data_dir))


def _cmd_create_user(args, s) -> int:
    from domain.models import OPERATOR_CALLER
    from worker.container import services

    user, api_key = services().users.create(OPERATOR_CALLER, args.email, args.name)
    print(json.dumps({"id": user.id, "email": user.email, "defaultBillingAccountId":
                      user.default_billing_account_id, "apiKey": api_key}))
    return 0


def _cmd_audit(args, s) -> int:
    from datetime import timedelta

    from worker.container import services

    problems = services().operations.audit(stuck_after=timedelta(seconds=args.stuck_after))
    for line in problems:
        print(line)
    print("audit: ok" if not problems else f"audit: {len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_relay(args, s) -> int:
    from worker.container import services

    print(f"relayed {services().operations.relay()} operation(s)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="billing", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=_cmd_migrate)
    api = sub.add_parser("api", help="serve the HTTP API with gunicorn")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int, default=2)
    api.add_argument("--threads", type=int, default=4)
    api.set_defaults(run=_cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=ALL_QUEUES)
    worker.add_argument("--concurrency", type=int, default=2)
    worker.set_defaults(run=_cmd_worker)
    beat = sub.add_parser("beat", help="run Celery beat (exactly one per deployment)")
    beat.add_argument("--state-dir", default=os.environ.get("BILLING_BEAT_STATE_DIR", "/tmp"))
    beat.set_defaults(run=_cmd_beat)
    flower = sub.add_parser("flower", help="run Flower, the Celery monitor, on the broker")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="0.0.0.0")
    flower.set_defaults(run=_cmd_flower)
    standalone = sub.add_parser("standalone", help="API, worker and beat in one command; without "
                                "DATABASE_URL/REDIS_URL on an embedded PostgreSQL")
    standalone.add_argument("--port", type=int)
    standalone.add_argument("--data-dir", default=os.environ.get("BILLING_DATA_DIR", ".billing-data"))
    standalone.set_defaults(run=_cmd_standalone)
    create_user = sub.add_parser("create-user", help="create a user and print its API key once")
    create_user.add_argument("email")
    create_user.add_argument("--name")
    create_user.set_defaults(run=_cmd_create_user)
    audit = sub.add_parser("audit", help="check the ledger's invariants; exit 1 on any break")
    audit.add_argument("--stuck-after", type=int, default=600, help="seconds before an unfinished operation counts as stuck")
    audit.set_defaults(run=_cmd_audit)
    sub.add_parser("relay", help="send unfinished operations to the queue once").set_defaults(run=_cmd_relay)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, settings_module.load()) or 0
    except settings_module.SettingsError as exc:
        print(f"billing: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an operator tool answers with one line, not a trace
        from domain.errors import DomainError

        if isinstance(exc, DomainError):
            print(f"billing: {exc.detail}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
