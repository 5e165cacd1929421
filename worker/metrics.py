"""Prometheus metrics of the API and the worker; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, make_wsgi_app)
from prometheus_client.core import GaugeMetricFamily

from domain.errors import Unavailable
from worker import rabbitmq
from worker.routing import QUEUES, dead_letter_queue

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
DB_READS = Counter("billing_db_reads_total", "Reads that may lag, by the database that served them",
                   ["database"])  # primary|replica1|replica2...
REPLICA_LAG = Gauge("billing_db_replica_lag_seconds", "A read replica's replay lag, last measured (+Inf: unreachable)",
                    ["database"], multiprocess_mode="livemax")
WEBHOOK_ATTEMPTS = Counter("billing_webhook_attempts_total", "Outbound webhook delivery attempts",
                           ["result"])  # succeeded|failed
WEBHOOK_SECONDS = Histogram("billing_webhook_attempt_duration_seconds", "Outbound webhook attempt time",
                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
OPERATIONS_FAILED = Counter("billing_operations_failed_total", "Operations that ended failed (a business refusal)",
                            ["kind"])


def task_started(name: str) -> float:
    TASKS.labels(name, "started").inc()
    return time.perf_counter()


def task_finished(name: str, state: str | None, started: float | None) -> None:
    event = {"SUCCESS": "succeeded", "RETRY": "retried"}.get(state or "", "failed")
    TASKS.labels(name, event).inc()
    if started is not None:
        TASK_SECONDS.labels(name).observe(time.perf_counter() - started)


def serve(port: int, token: str | None = None) -> None:
    """The worker's own /metrics (every pool process's counters), on a background thread; with `token`
    (BILLING_METRICS_TOKEN) only for `Authorization: Bearer <token>`, as the API's."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Loaded only where the multiprocess directory is set (the API's workers share one).
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    app = make_wsgi_app(registry) if token is None else _bearer(make_wsgi_app(registry), token)
    try:
        server = make_server("", port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as exc:  # the port is taken (a second worker on this host): run without it
        logging.getLogger(__name__).warning("worker metrics not served on port %s: %s", port, exc)
        return
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes are not worth a log line each
        pass


def _bearer(app, token: str):
    def guarded(environ, start_response):
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                            ("WWW-Authenticate", 'Bearer realm="metrics"')])
        return [b"send Authorization: Bearer <BILLING_METRICS_TOKEN>\n"]
    return guarded


# The labelled children, found once per label values and kept: `.labels()` checks and joins the values and takes
# the metric's lock on every call. A child is this process's (its value moves to the new pid's file after a fork).
_REQUEST_CHILDREN: dict[tuple[str, str, int], tuple] = {}
_DECISION_CHILDREN: dict[tuple[bool, bool], Counter] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    children = _REQUEST_CHILDREN.get((method, route, status))
    if children is None:
        children = _REQUEST_CHILDREN.setdefault((method, route, status), (
            HTTP_REQUESTS.labels(method, route, str(status)), HTTP_SECONDS.labels(method, route)))
    children[0].inc()
    children[1].observe(seconds)


def observe_decision(decision) -> None:
    child = _DECISION_CHILDREN.get((decision.allowed, decision.degraded))
    if child is None:
        child = _DECISION_CHILDREN.setdefault((decision.allowed, decision.degraded), RATE_LIMIT_DECISIONS.labels(
            "allowed" if decision.allowed else "denied", "unavailable" if decision.degraded else "ok"))
    child.inc()


def gauges(services, broker_url: str | None) -> dict[str, list[tuple[dict, float]]]:
    """Scrape-time values: whether the database and the broker answered this scrape, queue depth per queue and
    dead-letter queue (Redis or RabbitMQ broker), outbox backlog and its oldest operation's age, checkouts by state
    and the oldest pending one's age per provider, pending webhook deliveries, the oldest one's age and how long the
    first due has waited for its attempt. The database down leaves its gauges out, not the whole scrape."""
    try:
        snapshot = services.stats.snapshot()
    except Unavailable:
        snapshot = None
    found = {"billing_dependency_up": [({"dependency": "database"}, 0 if snapshot is None else 1)]}
    if snapshot is not None:
        found |= {
            "billing_outbox_operations": [({"status": s}, n) for s, n in snapshot["backlog"].items()],
            "billing_outbox_oldest_seconds": [({}, snapshot["oldest_unfinished_seconds"])],
            "billing_checkouts": [({"provider": p, "status": s}, n) for p, s, n in snapshot["checkouts"]],
            "billing_checkouts_oldest_pending_seconds": [
                ({"provider": p}, age) for p, age in snapshot["oldest_pending_checkouts"].items()],
            "billing_webhook_deliveries_pending": [({}, snapshot["webhooks_pending"])],
            "billing_webhook_oldest_pending_seconds": [({}, snapshot["webhooks_oldest_pending_seconds"])],
            "billing_webhook_overdue_seconds": [({}, snapshot["webhooks_overdue_seconds"])],
            "billing_auto_top_ups": [({"status": status}, n) for status, n in snapshot["auto_top_ups"].items()],
            "billing_auto_top_ups_oldest_in_flight_seconds": [({}, snapshot["auto_top_ups_oldest_in_flight_seconds"])],
        }
    depths = _queue_depths(broker_url)
    if depths is not None:
        found["billing_queue_depth"] = [({"queue": q}, n) for q, n in (depths or {}).items()]
        found["billing_dependency_up"].append(({"dependency": "broker"}, 0 if depths is False else 1))
    return found


def observe_read(database: str) -> None:
    DB_READS.labels(database).inc()


def observe_replica_lag(database: str, lag_ms: float) -> None:
    REPLICA_LAG.labels(database).set(lag_ms / 1000)


def _queue_depths(broker_url: str | None) -> dict[str, int] | bool | None:
    """Messages waiting in each queue and dead-letter queue; False when the broker did not answer, None for a
    broker without the gauge (the database broker of standalone mode)."""
    if rabbitmq.is_amqp(broker_url):
        try:
            return rabbitmq.queue_depths(broker_url)
        except Exception:  # kombu's and py-amqp's connection errors have no common base of their own
            return False
    if not (broker_url or "").startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return {q: client.llen(q) for q in [*QUEUES, *map(dead_letter_queue, QUEUES)]}
    except redis.RedisError:
        return False
    finally:
        client.close()


def observe_webhook_attempt(delivered) -> None:
    """After a webhook attempt (a domain.services.webhook_delivery.Delivered; None: no attempt was due)."""
    if delivered is not None:
        WEBHOOK_ATTEMPTS.labels("succeeded" if delivered.succeeded else "failed").inc()
        WEBHOOK_SECONDS.observe(delivered.seconds)


def observe_failed(kinds: list[str]) -> None:
    """Called after a commit with the kind of each operation it marked failed."""
    for kind in kinds:
        OPERATIONS_FAILED.labels(kind).inc()


def observe_postings(postings: list[tuple[str, int]]) -> None:
    """Called after a commit with the (kind, amount_cents) of each entry it wrote."""
    for kind, cents in postings:
        POSTINGS.labels(kind).inc()
        POSTED_CENTS.labels(kind, "credit" if cents > 0 else "debit").inc(abs(cents))


class _Gauges:
    """Values read at scrape time (see gauges)."""

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


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of the API's worker processes that are gone (granian respawns a worker that died):
    prometheus-client would go on reporting their last values. Each worker calls it as it starts."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(int(pid), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # some other user's process holds the number
        return True
    return True
