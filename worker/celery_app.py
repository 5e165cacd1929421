"""The Celery app: Redis broker, JSON only, late acks, queues by purpose."""
from celery import Celery

import beat_schedule
from worker import settings as settings_module

QUEUES = ("ledger", "payments", "tiers", "maintenance")
TASK_MODULES = ["tasks.ledger", "tasks.accounts", "tasks.maintenance", "tasks.payments_stripe",
                "tasks.payments_x402"]

# Tasks are named "<queue>.<action>", so the queue is the name's first part.
ROUTES = {f"{queue}.*": {"queue": queue} for queue in QUEUES}
ROUTES["accounts.*"] = {"queue": "ledger"}


def queue_of(task_name: str) -> str:
    prefix = task_name.split(".", 1)[0]
    return "ledger" if prefix == "accounts" else prefix


def transport_options(broker_url: str) -> dict:
    """Redis: redelivery after an hour (longer than any task or countdown), short socket timeouts."""
    if broker_url.startswith(("redis", "rediss", "unix")):
        return {"visibility_timeout": 3600, "socket_connect_timeout": 2, "socket_timeout": 5,
                "retry_on_timeout": True}
    return {}


def create_celery(settings: settings_module.Settings) -> Celery:
    app = Celery("billing", include=TASK_MODULES)
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options=transport_options(settings.broker_url or ""),
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=16,
        worker_hijack_root_logger=False,
        task_default_queue="ledger",
        task_routes=ROUTES,
        task_create_missing_queues=True,
        beat_schedule=beat_schedule.SCHEDULE,
        timezone="UTC",
    )
    return app


app = create_celery(settings_module.load())
