"""Webhook receivers misbehaving against real workers: a worker killed with SIGKILL while a receiver holds its
request (the next worker's attempt has the same webhook-id, and the delivery ends succeeded once), and receivers
that never answer in time while credits stream in (applied all the same)."""
import threading

import pytest
from sqlalchemy import text

from tests.flows.test_webhooks import WEBHOOKS
from tests.processes import wait_for_operations, wait_until
from worker.processes import MONEY_QUEUES
from tests.standins.webhook_receiver import Answer, WebhookReceiver


@pytest.mark.rabbitmq
def test_a_worker_killed_mid_delivery_is_followed_by_an_attempt_with_the_same_webhook_id(stack):
    stack.env.update(WEBHOOKS)
    stack.start(concurrency=1)
    api, held = stack.api, threading.Event()
    with WebhookReceiver() as receiver:
        owner = api.new_user()
        ws = api.new_workspace(owner)["id"]
        endpoint = api.call("POST", f"/workspaces/{ws}/webhook-endpoints", owner.key,
                            json={"url": receiver.url, "events": ["transaction.created"]}).json
        receiver.answer(Answer(hold=held))
        api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 100})
        [first] = receiver.wait_for(1)
        stack.worker.kill()  # mid-request: the receiver holds the answer
        stack.start(api=False, concurrency=1)
        stack.start_beat()  # its dispatcher re-sends the delivery once the dead attempt's claim ran out
        second = receiver.wait_for(2, timeout=60)[1]
        held.set()
        assert second.webhook_id == first.webhook_id and second.body == first.body
        assert second.verifies(endpoint["secret"])
        path = f"/workspaces/{ws}/webhook-endpoints/{endpoint['id']}/deliveries"
        done = wait_until(lambda: (lambda d: d if d[0]["status"] == "succeeded" else None)(
            api.call("GET", path, owner.key).json["data"]), 30, "the delivery to succeed")
        assert (done[0]["attempts"], done[0]["lastStatusCode"]) == (2, 200)
        assert len(receiver.received()) == 2


def test_credits_are_applied_while_every_receiver_hangs(stack, engine):
    """As deployed: the ledger's worker and a webhooks worker. A receiver that never answers in time keeps the
    webhooks worker busy and its deliveries failing; every credit is applied meanwhile."""
    stack.env.update(WEBHOOKS)
    stack.start(queues=MONEY_QUEUES)
    stack.start(api=False, queues="webhooks", concurrency=1)
    api, held = stack.api, threading.Event()
    with WebhookReceiver() as receiver:
        receiver.answer(*[Answer(hold=held)] * 1000)
        owner = api.new_user()
        ws = api.new_workspace(owner)["id"]
        api.call("POST", f"/workspaces/{ws}/webhook-endpoints", owner.key,
                 json={"url": receiver.url, "events": ["transaction.created"]})
        first = api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 10}).json["id"]
        receiver.wait_for(1, timeout=60)  # the webhooks worker now waits on a receiver that does not answer
        ids = [first, *(api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 10}).json["id"]
                        for _ in range(30))]
        assert wait_for_operations(engine, ids, timeout=60) == {i: "succeeded" for i in ids}
        assert not any(status == "succeeded" for status in _delivery_statuses(engine, ws))
        held.set()


def _delivery_statuses(engine, ws: str) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT d.status FROM webhook_deliveries d JOIN webhook_endpoints e "
                                 "ON e.id = d.endpoint_id WHERE e.workspace_id = :w"), {"w": ws}).scalars().all()
