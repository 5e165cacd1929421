"""Sending tasks by name, best effort: a send the broker refused is the outbox relay's job."""
import logging

from domain import tracing
from worker import rabbitmq
from worker.celery_app import app
from worker.routing import queue_of

log = logging.getLogger(__name__)

# Queues this process has declared: Celery would declare (bind a copy of) the queue on every send; once
# is enough, the broker routes to it from then on.
_declared: set[str] = set()
_CONFIRMED = rabbitmq.is_amqp(app.conf.broker_url)


def enqueue(task_name: str, **kwargs: object) -> bool:
    """One attempt, bounded by the broker's socket timeout (RabbitMQ: its confirm timeout): a request never
    waits on a dead broker."""
    queue = queue_of(task_name)
    with app.producer_or_acquire() as producer:
        try:
            app.send_task(task_name, kwargs=kwargs, queue=queue, retry=False, producer=producer,
                          headers={"request_id": tracing.request_id.get()},
                          **({"confirm_timeout": rabbitmq.CONFIRM_TIMEOUT_SECONDS} if _CONFIRMED else {}),
                          **({"declare": []} if queue in _declared else {}))
            _declared.add(queue)
            return True
        except Exception as exc:  # any broker failure: the intent is already in Postgres
            log.warning("enqueue of %s failed (%s: %s); the relay will send it", task_name,
                        type(exc).__name__, exc)
            if _CONFIRMED:
                # A confirm still owed on this channel would be taken for the next message's: start afresh.
                producer.connection.collect()
            return False
