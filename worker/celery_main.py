"""`python -m worker.celery_main ...`: Celery's command line for the worker, with a shared metrics
directory set before anything (Celery's CLI plugins included) imports prometheus_client."""
import os
import sys
import tempfile

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="billing-worker-metrics-")

from celery.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
