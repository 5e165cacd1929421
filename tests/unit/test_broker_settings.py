"""The Celery settings each broker gets: on RabbitMQ quorum queues under the same names, dead-lettering into
<queue>.dead, publisher confirms and no global QoS; on Redis what it had; late acks on both."""
from types import SimpleNamespace

import pytest
from celery.worker.consumer.tasks import Tasks

from domain.names import Task
from worker import rabbitmq, settings
from worker.celery_app import create_celery
from worker.routing import QUEUES

AMQP = "amqp://billing:billing@rabbitmq:5672/billing"
REDIS = "redis://redis:6379/0"


def app_on(broker_url: str):
    return create_celery(settings.load({"CELERY_BROKER_URL": broker_url}))


def test_on_rabbitmq_every_queue_is_a_quorum_queue_under_its_usual_name_that_dead_letters_into_its_own():
    queues = app_on(AMQP).amqp.queues
    assert set(queues) == set(QUEUES)
    for name in QUEUES:
        queue = queues[name]
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (name, "topic", name)
        assert queue.durable and queue.queue_arguments == {
            "x-queue-type": "quorum", "x-delivery-limit": rabbitmq.DELIVERY_LIMIT,
            "x-dead-letter-exchange": "dead-letter", "x-dead-letter-routing-key": name,
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    dead = {q.name: q for q in rabbitmq.dead_letter_queues()}
    assert set(dead) == {f"{name}.dead" for name in QUEUES}
    for name in QUEUES:
        assert (dead[f"{name}.dead"].exchange.name, dead[f"{name}.dead"].routing_key) == ("dead-letter", name)
        assert dead[f"{name}.dead"].queue_arguments == {"x-queue-type": "quorum"}


@pytest.mark.parametrize("task", list(Task))
def test_on_rabbitmq_each_task_is_routed_to_a_quorum_queue(task):
    app = app_on(AMQP)
    queue = app.amqp.router.route({}, task)["queue"]
    assert queue.queue_arguments["x-queue-type"] == "quorum" and queue.name in QUEUES


def test_on_rabbitmq_publishes_are_confirmed_and_acknowledged_late():
    conf = app_on(AMQP).conf
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_create_missing_queue_type == "quorum"


def test_on_rabbitmq_the_worker_asks_for_no_global_qos_which_quorum_queues_refuse():
    app = app_on(AMQP)
    assert app.conf.worker_detect_quorum_queues
    consumer = SimpleNamespace(app=app, connection=SimpleNamespace(
        qos_semantics_matches_spec=False, transport=SimpleNamespace(driver_type="amqp")))
    assert Tasks.qos_global(Tasks.__new__(Tasks), consumer) is False


def test_on_rabbitmq_the_worker_declares_the_dead_letter_queues_when_it_connects():
    assert rabbitmq.DeclareDeadLetterQueues in app_on(AMQP).steps["consumer"]
    assert rabbitmq.DeclareDeadLetterQueues not in app_on(REDIS).steps["consumer"]


def test_on_redis_nothing_of_rabbitmq_applies():
    conf = app_on(REDIS).conf
    assert conf.task_queues is None and "confirm_publish" not in conf.broker_transport_options
    assert conf.broker_transport == "worker.broker:Transport"
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    assert conf.task_acks_late and conf.task_reject_on_worker_lost


@pytest.mark.parametrize("url, amqp", [(AMQP, True), ("amqps://h/v", True), ("pyamqp://h//", True),
                                       (REDIS, False), ("sqla+postgresql+psycopg://h/db", False), (None, False)])
def test_which_urls_are_rabbitmq(url, amqp):
    assert rabbitmq.is_amqp(url) is amqp
