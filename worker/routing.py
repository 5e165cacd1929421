"""Celery queues by purpose, and the queue of each task name."""
QUEUES = ("ledger", "payments", "tiers", "maintenance")

# Tasks are named "<queue>.<action>", so the queue is the name's first part.
ROUTES = {f"{queue}.*": {"queue": queue} for queue in QUEUES}
ROUTES["accounts.*"] = {"queue": "ledger"}


def queue_of(task_name: str) -> str:
    prefix = task_name.split(".", 1)[0]
    return "ledger" if prefix == "accounts" else prefix
