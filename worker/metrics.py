"""Prometheus metrics of the API and the worker; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""
import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

HTTP_REQUESTS = Counter("billing_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_SECONDS = Histogram("billing_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                         buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
TASKS = Counter("billing_tasks_total", "Celery task events", ["task", "event"])  # started|succeeded|failed|retried
TASK_SECONDS = Histogram("billing_task_duration_seconds", "Celery task run time", ["task"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
POSTINGS = Counter("billing_ledger_postings_total", "Ledger entries committed", ["kind"])
POSTED_CENTS = Counter("billing_ledger_posted_cents_total", "Cents moved by committed entries",
                       ["kind", "direction"])
RATE_LIMIT_DECISIONS = Counter("billing_rate_limit_decisions_total", "Rate-limit decisions", ["scope", "decision"])


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


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
