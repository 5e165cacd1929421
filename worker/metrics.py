"""Prometheus metrics of the API and the worker; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""
import logging
import os
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from worker.routing import QUEUES

HTTP_REQUESTS = Counter("billing_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_SECONDS = Histogram("billing_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                         buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
TASKS = Counter("billing_tasks_total", "Celery task events", ["task", "event"])  # started|succeeded|failed|retried
TASK_SECONDS = Histogram("billing_task_duration_seconds", "Celery task run time", ["task"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
POSTINGS = Counter("billing_ledger_postings_total", "Ledger entries committed", ["kind"])
POSTED_CENTS = Counter("billing_ledger_posted_cents_total", "Cents moved by committed entries",
                       ["kind", "direction"])
RATE_LIMIT_DECISIONS = Counter("billing_rate_limit_decisions_total", "Rate-limit decisions (checks and API keys)",
                               ["decision", "store"])  # allowed|denied; ok|unavailable


def task_started(name: str) -> float:
    TASKS.labels(name, "started").inc()
    return time.perf_counter()


def task_finished(name: str, state: str | None, started: float | None) -> None:
    event = {"SUCCESS": "succeeded", "RETRY": "retried"}.get(state or "", "failed")
    TASKS.labels(name, event).inc()
    if started is not None:
        TASK_SECONDS.labels(name).observe(time.perf_counter() - started)


def serve(port: int) -> None:
    """The worker's own /metrics (every pool process's counters), on a background thread."""
    from prometheus_client import start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:  # the port is taken (a second worker on this host): run without it
        logging.getLogger(__name__).warning("worker metrics not served on port %s: %s", port, exc)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


def observe_decision(decision) -> None:
    RATE_LIMIT_DECISIONS.labels("allowed" if decision.allowed else "denied",
                                "unavailable" if decision.degraded else "ok").inc()


def gauges(services, broker_url: str | None) -> dict[str, list[tuple[dict, float]]]:
    """Scrape-time values: queue depth per queue (Redis broker), outbox backlog, checkouts by state."""
    snapshot = services.stats.snapshot()
    found = {
        "billing_outbox_operations": [({"status": s}, n) for s, n in snapshot["backlog"].items()],
        "billing_checkouts": [({"provider": p, "status": s}, n) for p, s, n in snapshot["checkouts"]],
    }
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url, socket_timeout=1, socket_connect_timeout=1)
        try:
            found["billing_queue_depth"] = [({"queue": q}, client.llen(q)) for q in QUEUES]
        except redis.RedisError:
            found["billing_queue_depth"] = []
        finally:
            client.close()
    return found


def observe_postings(postings: list[tuple[str, int]]) -> None:
    """Called after a commit with the (kind, amount_cents) of each entry it wrote."""
    for kind, cents in postings:
        POSTINGS.labels(kind).inc()
        POSTED_CENTS.labels(kind, "credit" if cents > 0 else "debit").inc(abs(cents))


class _Gauges:
    """Values read at scrape time: queue depth, outbox backlog, checkouts by state."""

    def __init__(self, read: Callable[[], dict[str, list[tuple[dict, float]]]]) -> None:
        self._read = read

    def collect(self):
        for name, samples in self._read().items():
            labels = sorted({key for sample_labels, _ in samples for key in sample_labels})
            family = GaugeMetricFamily(name, name.replace("_", " "), labels=labels)
            for sample_labels, value in samples:
                family.add_metric([sample_labels.get(label, "") for label in labels], value)
            yield family


def render(read_gauges: Callable[[], dict] | None = None) -> tuple[str, bytes]:
    """The exposition text: this process's (or every process's) counters plus the scrape-time gauges."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry)
    if read_gauges is not None:
        gauges = CollectorRegistry()
        gauges.register(_Gauges(read_gauges))
        text += generate_latest(gauges)
    return CONTENT_TYPE_LATEST, text
