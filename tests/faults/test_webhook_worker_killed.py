"""A worker killed with SIGKILL while a receiver holds its webhook request: the delivery is attempted again, by
the next worker, with the same webhook-id, and ends succeeded once."""
import threading

import pytest

from tests.flows.test_webhooks import WEBHOOKS
from tests.processes import wait_until
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
