"""Paths through the broker beside the plain send-and-apply: dead letters, the same on both brokers, and on
RabbitMQ the countdown of a retry, which waits in the broker (Celery's native delayed delivery)."""
import pytest

from domain.models import OPERATOR_CALLER
from domain.names import Task
from tests.factories import prometheus_samples
from tests.processes import entries_per_operation, wait_for_operations, wait_until

pytestmark = pytest.mark.rabbitmq


def test_a_message_for_a_task_no_worker_knows_ends_in_the_dead_letter_queue(stack):
    """A message the worker refuses is neither run nor dropped but kept in <queue>.dead, for an operator."""
    task_id = stack.send_task("ledger.no_such_task", operation_id="op_0")

    wait_until(lambda: task_id in stack.broker.dead_letters("ledger"), 30, "the message in ledger.dead")
    assert "Received unregistered task of type 'ledger.no_such_task'" in stack.worker.output()
    served = prometheus_samples(stack.api.call("GET", "/metrics").text)
    assert served['billing_queue_depth{queue="ledger.dead"}'] == len(stack.broker.dead_letters("ledger")) >= 1
    assert served['billing_dependency_up{dependency="broker"}'] == 1


@pytest.mark.rabbitmq(only=True)
def test_on_rabbitmq_a_countdown_waits_in_the_brokers_delay_queues_then_the_operation_applies(stack, services,
                                                                                                queue, engine):
    """Quorum queues allow no global QoS, so a worker could not hold a message until its countdown ends:
    RabbitMQ holds it, in the celery_delayed_<bit> queues (5 s = 0b101: 4 s at level 2, then 1 s at level 0)."""
    workspace = stack.api.new_workspace(stack.api.new_user())
    queue.up = False  # recorded in PostgreSQL only: the test sends the one message, as a retry would
    op = services.operations.request_credit(OPERATOR_CALLER, workspace["id"], 200, "retried")

    stack.send_task(Task.APPLY_OPERATION, countdown=5, operation_id=op.id)
    assert stack.broker.ready("celery_delayed_2") == 1
    assert wait_for_operations(engine, [op.id], timeout=30) == {op.id: "succeeded"}
    assert entries_per_operation(engine, [op.id]) == {op.id: 1}
