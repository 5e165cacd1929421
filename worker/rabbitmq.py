"""RabbitMQ as the broker: quorum queues under the names of worker.routing, each dead-lettering into
<queue>.dead, and publisher confirms.

Celery's documented settings for quorum queues: the queues are declared with x-queue-type quorum, and
worker_detect_quorum_queues turns global QoS off (quorum queues refuse it). Countdown retries then take
Celery's native delayed delivery (RabbitMQ's own timed queues, declared by every worker), which routes
through topic exchanges: hence a topic exchange per queue.
"""
from celery import bootsteps
from kombu import Connection, Exchange, Queue

from worker.routing import QUEUES, dead_letter_queue

DEAD_LETTER_EXCHANGE = "dead-letter"
# RabbitMQ 4's default for quorum queues, given explicitly so that 3.x behaves the same. A message handed
# out this often without an acknowledgement (say, a task that kills its worker each time) moves to
# <queue>.dead instead of circling; an operation's row stays unfinished, so the relay still sends it again.
DELIVERY_LIMIT = 20
# The longest an API request waits for RabbitMQ to confirm a message: a frozen broker costs it one
# attempt of this, as a Redis socket timeout does (the relay sends what was not confirmed).
CONFIRM_TIMEOUT_SECONDS = 2
# A publish returns once RabbitMQ has the message (for a quorum queue: on a majority of its replicas).
TRANSPORT_OPTIONS = {"confirm_publish": True}


def is_amqp(broker_url: str | None) -> bool:
    return (broker_url or "").startswith(("amqp://", "amqps://", "pyamqp://"))


def task_queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": name,  # not the message's own key, which a delayed retry prefixes
        # the message leaves the queue only once <queue>.dead holds it (at-least-once needs reject-publish)
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    })


def dead_letter_queues() -> list[Queue]:
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct")
    return [Queue(dead_letter_queue(name), exchange, routing_key=name, queue_arguments={"x-queue-type": "quorum"})
            for name in QUEUES]


def celery_settings() -> dict:
    """What create_celery adds for an amqp:// broker."""
    return {
        "task_queues": [task_queue(name) for name in QUEUES],
        "task_create_missing_queue_type": "quorum",
        "task_create_missing_queue_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
    }


def queue_depths(broker_url: str) -> dict[str, int]:
    """Messages ready in each queue and dead-letter queue (0 for one no process declared yet); a broker that
    does not answer within a second raises."""
    depths = {}
    with Connection(broker_url, connect_timeout=1) as conn:
        conn.ensure_connection(max_retries=1, timeout=1)
        for name in [*QUEUES, *map(dead_letter_queue, QUEUES)]:
            channel = conn.channel()  # a passive declare of a missing queue closes its channel
            try:
                depths[name] = channel.queue_declare(name, passive=True).message_count
            except conn.channel_errors:
                depths[name] = 0
            finally:
                conn.maybe_close_channel(channel)
    return depths


class DeclareDeadLetterQueues(bootsteps.StartStopStep):
    """Each time the worker's consumer connects: a message dead-lettered to an exchange without its queue
    bound would be dropped, so the workers, which are what dead-letters, declare them."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, c) -> bool:
        return is_amqp(c.app.conf.broker_url)

    def start(self, c) -> None:
        channel = c.connection.default_channel
        for queue in dead_letter_queues():
            queue.bind(channel).declare()
