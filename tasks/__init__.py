"""Celery tasks: thin adapters over domain services, one module per purpose."""
from domain.errors import Unavailable

# Errors worth a retry: the database or a dependency did not answer (the unit of work turns a database
# that cannot be reached into Unavailable). Anything else is a bug or a business outcome, and retrying it
# would not help.
TRANSIENT = (Unavailable,)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": True, "retry_backoff_max": 60,
         "retry_jitter": True, "max_retries": 8, "acks_late": True, "soft_time_limit": 60,
         "time_limit": 90}
# Operations retry themselves (tasks.ledger.OperationTask) without end, recording each attempt.
OPERATION_RETRY = {"acks_late": True, "soft_time_limit": 60, "time_limit": 90, "max_retries": None}
