"""Default billing accounts: provisioning and its backfill."""
from tasks import RETRY
from worker.celery_app import app
from worker.container import services


@app.task(name="accounts.provision_default", **RETRY)
def provision_default(user_id: str) -> None:
    """Ensure the user's default account and intro credit; a no-op when the API already did."""
    services().users.provision_default(user_id)


@app.task(name="accounts.backfill_default", **RETRY)
def backfill_default() -> int:
    return services().users.backfill_default_accounts()
