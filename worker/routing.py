"""Celery queues by purpose, the queue of each task name, and where a queue's dead letters go."""
# webhooks: outbound deliveries on their own queue (and workers), so a slow receiver never delays money.
QUEUES = ("ledger", "payments", "tiers", "maintenance", "webhooks")

# Tasks are named "<queue>.<action>", so the queue is the name's first part.
ROUTES = {f"{queue}.*": {"queue": queue} for queue in QUEUES}
ROUTES["accounts.*"] = {"queue": "ledger"}


def queue_of(task_name: str) -> str:
    prefix = task_name.split(".", 1)[0]
    return "ledger" if prefix == "accounts" else prefix


def dead_letter_queue(queue: str) -> str:
    """Where a message a worker refuses (an unknown task, a malformed message) ends, on either broker."""
    return f"{queue}.dead"
