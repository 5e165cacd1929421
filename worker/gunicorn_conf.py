"""gunicorn settings: shared Prometheus metrics across the API's worker processes."""
import os
import shutil
import tempfile


def on_starting(server) -> None:
    """In the master, before any worker imports prometheus_client: one metrics directory for all."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="billing-api-metrics-")


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path.startswith(tempfile.gettempdir() + "/billing-api-metrics-"):
        shutil.rmtree(path, ignore_errors=True)
