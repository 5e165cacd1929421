"""The tiers queue: rate-limit tiers recomputed after money moves, on refresh, and when stale."""
from domain.names import Task
from tasks import OPERATION_RETRY, RETRY
from tasks.ledger import OperationTask
from worker.celery_app import app
from worker.container import services


@app.task(name=Task.RECOMPUTE_TIER, **RETRY)
def recompute(account_id: str) -> str | None:
    """Recompute one account's tier from the committed ledger; repeating it changes nothing."""
    return services().rate_limits.recompute(account_id)


@app.task(name=Task.APPLY_TIER_OPERATION, base=OperationTask, **OPERATION_RETRY)
def apply_operation(operation_id: str) -> None:
    """Apply a tier_refresh operation; a redelivery finds it finished."""
    services().operations.apply(operation_id)


@app.task(name=Task.REFRESH_STALE_TIERS, **RETRY)
def refresh_stale() -> int:
    """Recompute tiers older than BILLING_TIER_MAX_AGE_SECONDS or than their account's newest entry."""
    return services().rate_limits.refresh_stale()
