"""The outbox relay as deployed: celery beat schedules it, the worker runs it, lost work gets applied."""
import re

from beat_schedule import RELAY_EVERY_SECONDS
from domain.models import OPERATOR_CALLER
from tests.processes import age_operations, assert_sound, entries_per_operation, wait_for_operations


def test_beat_relays_an_operation_whose_message_was_lost(stack, services, queue, engine):
    owner = stack.api.new_user()
    workspace = stack.api.new_workspace(owner)
    queue.up = False  # the broker refused the send: only Postgres knows about the credit
    op = services.operations.request_credit(OPERATOR_CALLER, workspace["id"], 450, "lost message")
    assert queue.sent == [] and services.operations.get(OPERATOR_CALLER, op.id).status == "queued"
    age_operations(engine, [op.id])  # lost long enough ago for the relay to take it up

    stack.start_beat()
    assert wait_for_operations(engine, [op.id], timeout=RELAY_EVERY_SECONDS + 20) == {op.id: "succeeded"}

    relays = re.findall(r"Task maintenance\.relay_outbox\[\S+\] succeeded in \S+ (\d+)", stack.worker.output())
    assert relays and int(relays[0]) >= 1, stack.worker.output()
    assert entries_per_operation(engine, [op.id]) == {op.id: 1}
    balance = stack.api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1450
    assert_sound(services, workspace["defaultBillingAccountId"], op.id)
