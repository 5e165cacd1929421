"""x402 as deployed: an SDK client pays the served API, a real Celery worker settles, credited once."""
import pytest
from x402.http.utils import decode_payment_required_header, decode_payment_response_header

from tests.processes import X402_NETWORK, assert_sound, wait_for_operations, x402_stack
from tests.standins.x402_facilitator import Wallet

NETWORK = X402_NETWORK


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, facilitator):
    with x402_stack(database_url, tmp_path_factory.mktemp("x402-stack"), facilitator) as stack:
        yield stack


def test_an_sdk_client_pays_over_http_and_the_worker_credits_the_top_up_once(stack, services, engine, facilitator):
    api = stack.api
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    path = f"/workspaces/{workspace['id']}/billing/checkout/x402"
    wallet = Wallet()
    facilitator.fund(NETWORK, wallet.address, 10_000_000)

    unpaid = api.call("POST", path, owner.key, json={"amountCents": 750})
    assert unpaid.status_code == 402, unpaid.text
    header = wallet.pay(decode_payment_required_header(unpaid.headers["PAYMENT-REQUIRED"]))
    paid = api.call("POST", path, owner.key, json={"amountCents": 750}, headers={"PAYMENT-SIGNATURE": header})
    assert paid.status_code == 202, paid.text
    assert wait_for_operations(engine, [paid.json["id"]], timeout=30) == {paid.json["id"]: "succeeded"}

    checkout = api.call("GET", f"/workspaces/{workspace['id']}/billing/checkouts/{paid.json['checkoutId']}",
                        owner.key).json
    assert checkout["status"] == "completed" and checkout["payer"] == wallet.address
    again = api.call("POST", path, owner.key, json={"amountCents": 750}, headers={"PAYMENT-SIGNATURE": header})
    assert (again.status_code, again.json["checkoutId"]) == (202, paid.json["checkoutId"])
    assert decode_payment_response_header(again.headers["PAYMENT-RESPONSE"]).transaction == checkout["transaction"]
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1000 + 750
    assert facilitator.settles() == 1 and facilitator.balance(NETWORK, wallet.address) == 10_000_000 - 7_500_000
    assert_sound(services, workspace["defaultBillingAccountId"], paid.json["id"])
