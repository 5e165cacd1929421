"""The payments queue: x402 top-ups, settled and reconciled."""
from domain.names import Task
from tasks import RETRY
from worker.celery_app import app
from worker.container import services


@app.task(name=Task.SETTLE_X402, **RETRY)
def settle_x402(operation_id: str) -> None:
    """Settle one accepted x402 payment and credit it once; a redelivery finds it leased or finished."""
    services().x402.settle(operation_id)


@app.task(name=Task.RECONCILE_X402, **RETRY)
def reconcile_x402() -> int:
    """Re-settle pending x402 payments with their stored payload; expire those past validBefore."""
    return services().x402.reconcile()
