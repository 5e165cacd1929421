"""The Celery app: Redis or RabbitMQ broker, JSON only, late acks, queues by purpose."""
import os

from celery import Celery, signals

import beat_schedule
from domain import tracing
from worker import logs, metrics, rabbitmq, settings as settings_module, tracing as traces
from worker.routing import ROUTES

TASK_MODULES = ["tasks.ledger", "tasks.accounts", "tasks.maintenance", "tasks.payments_stripe",
                "tasks.payments_x402", "tasks.tiers", "tasks.webhooks"]


def is_redis(broker_url: str | None) -> bool:
    return (broker_url or "").startswith(("redis://", "rediss://"))


def transport_options(broker_url: str, visibility_timeout: int = 3600) -> dict:
    """RabbitMQ: publisher confirms. Redis: redelivery after an hour by default (longer than any task or
    countdown), short socket timeouts.

    A request enqueues after its commit, so a down or frozen broker must cost it one attempt of
    at most a socket timeout: max_retries=0 stops kombu's connect retries (up to twice the
    timeout), and no retry_on_timeout (it doubled the wait and replayed writes). The relay
    sends what failed; the worker's consumer reconnects with its own retry settings.

    The visibility timeout is not how a vanished worker host's work is taken over: its unacknowledged
    messages wait that long, and a shorter timeout would hand every retry waiting out its countdown (up to
    five minutes) to a second worker as well. The outbox relay re-sends any operation left unfinished for
    30 s instead (docs/scaling.md, "Worker hosts and failover").
    """
    if rabbitmq.is_amqp(broker_url):
        return dict(rabbitmq.TRANSPORT_OPTIONS)
    if not broker_url.startswith(("redis", "rediss", "unix")):
        return {}
    options = {"visibility_timeout": visibility_timeout, "socket_connect_timeout": 2, "socket_timeout": 2,
               "max_retries": 0}
    if visibility_timeout < 600:  # kombu looks for unacknowledged messages to redeliver every 100 s (10 x 10)
        options |= {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    return options


def create_celery(settings: settings_module.Settings) -> Celery:
    app = Celery("billing", include=TASK_MODULES)
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport="worker.broker:Transport" if is_redis(settings.broker_url) else None,
        broker_transport_options=transport_options(settings.broker_url or "", settings.broker_visibility_timeout),
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=16,
        worker_hijack_root_logger=False,
        # Task events for Flower, on in every deployment (the worker's `-E`); the sqla broker of
        # standalone mode has no fanout, and Celery turns them off there by itself.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue="ledger",
        task_routes=ROUTES,
        task_create_missing_queues=True,
        beat_schedule=beat_schedule.SCHEDULE,
        timezone="UTC",
    )
    if rabbitmq.is_amqp(settings.broker_url):
        app.conf.update(rabbitmq.celery_settings())
        app.steps["consumer"].add(rabbitmq.DeclareDeadLetterQueues)
    return app


app = create_celery(settings_module.load())


@signals.setup_logging.connect
def _json_logs(**_) -> None:
    logs.configure("worker")


@signals.task_prerun.connect
def _bind_ids(task=None, kwargs=None, **_) -> None:
    task.request.trace_tokens = (tracing.request_id.set(getattr(task.request, "request_id", None)),
                                 tracing.operation_id.set((kwargs or {}).get("operation_id")))


@signals.task_postrun.connect
def _unbind_ids(task=None, **_) -> None:
    tokens = getattr(task.request, "trace_tokens", None)
    if tokens:
        tracing.request_id.reset(tokens[0])
        tracing.operation_id.reset(tokens[1])


@signals.task_prerun.connect
def _task_started(task=None, **_) -> None:
    task.request.metrics_started = metrics.task_started(task.name)


@signals.task_postrun.connect
def _task_finished(task=None, state=None, **_) -> None:
    metrics.task_finished(task.name, state, getattr(task.request, "metrics_started", None))


@signals.worker_process_init.connect
def _trace(**_) -> None:
    """Each pool child sets tracing up itself: an exporter's thread does not survive the fork."""
    traces.setup("billing-worker", settings_module.load().otlp_endpoint)


@signals.worker_process_shutdown.connect
def _flush_traces(**_) -> None:
    traces.flush()


@signals.worker_ready.connect
def _serve_metrics(**_) -> None:
    port = int(os.environ.get("WORKER_METRICS_PORT", "9808") or 0)
    if port:
        metrics.serve(port, os.environ.get("BILLING_METRICS_TOKEN", "").strip() or None)
