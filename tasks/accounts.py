"""Default billing accounts: provisioning and its backfill."""
from domain.names import Task
from tasks import RETRY
from worker.celery_app import app
from worker.container import services


@app.task(name=Task.PROVISION_DEFAULT_ACCOUNT, **RETRY)
def provision_default(user_id: str) -> None:
    """Ensure the user's default account and intro credit; a no-op when the API already did."""
    services().users.provision_default(user_id)


@app.task(name=Task.BACKFILL_DEFAULT_ACCOUNTS, **RETRY)
def backfill_default() -> int:
    return services().users.backfill_default_accounts()
