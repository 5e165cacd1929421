"""x402 checkout: terms an SDK client can pay, payments verified and credited once, refusals that credit
nothing, and settlements whose outcome is unknown left pending until the reconcile job settles them."""
import base64
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from eth_account import Account
from falcon import testing
from sqlalchemy import text
from x402.http.utils import decode_payment_required_header, decode_payment_response_header

from api import responses
from api.app import create_app
from domain.models import OPERATOR_CALLER
from domain.names import Task
from domain.providers.x402_gateway import NETWORKS, X402Config, X402Gateway, terms
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.services.x402_checkout import EXPIRY_GRACE_SECONDS
from domain.store.uow import UnitOfWork
from tests.api.checks import assert_problem, ledger_problems
from tests.factories import OPERATOR_TOKEN, Api
from tests.standins.x402_facilitator import FacilitatorStandIn, Wallet

PAY_TO = "0x1563915e194D8CfBA1943570603F7606A3115508"
NETWORK = "eip155:84532"
USDC = NETWORKS[NETWORK].usdc


@pytest.fixture(scope="module")
def facilitator():
    standin = FacilitatorStandIn(delay=3.0).start()
    yield standin
    standin.stop()


@pytest.fixture
def services(engine, queue, facilitator) -> Services:
    """The real services with an x402 gateway that talks to the stand-in (and gives up after 2 s)."""
    facilitator.scripted.clear()
    facilitator.verify_status = None
    gateway = X402Gateway(X402Config(pay_to=PAY_TO, network=NETWORK, facilitator_url=facilitator.url,
                                     timeout_seconds=2.0))
    return Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(intro_credit_cents=1000),
                            x402=gateway))


@pytest.fixture
def buyer(api):
    owner = api.new_user("Owner")
    return owner, api.new_workspace(owner)


@pytest.fixture
def wallet(facilitator) -> Wallet:
    payer = Wallet()
    facilitator.fund(NETWORK, payer.address, 10**12)
    return payer


def checkout(api, key: str, workspace_id: str, cents: int = 500, header: str | None = None,
             name: str = "PAYMENT-SIGNATURE", **headers):
    headers = {**headers, name: header} if header else headers
    return api.call("POST", f"/workspaces/{workspace_id}/billing/checkout/x402", key, json={"amountCents": cents},
                    headers=headers)


def terms_of(api, key: str, workspace_id: str, cents: int = 500):
    result = checkout(api, key, workspace_id, cents)
    assert result.status_code == 402, result.text
    return decode_payment_required_header(result.headers["PAYMENT-REQUIRED"])


def settle_queued(services, queue) -> int:
    """Run every queued settle task, as the worker would; how many ran."""
    ran, others = 0, []
    while queue.sent:
        name, kwargs = queue.sent.pop(0)
        if name == Task.SETTLE_X402:
            services.x402.settle(**kwargs)
            ran += 1
        else:  # other work (provisioning, tier recomputes) is not ours to run; it stays queued
            others.append((name, kwargs))
    queue.sent.extend(others)
    return ran


def topups(engine, account_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT amount_cents FROM ledger_entries WHERE billing_account_id = :a "
                                      "AND kind = 'x402_topup'"), {"a": account_id}).scalars())


def read_checkout(api, key: str, workspace_id: str, checkout_id: str) -> dict:
    result = api.call("GET", f"/workspaces/{workspace_id}/billing/checkouts/{checkout_id}", key)
    assert result.status_code == 200, result.text
    return responses.CheckoutShape.model_validate(result.json).model_dump()


def assert_credited_once(api, services, engine, owner, workspace, cents: int = 500) -> None:
    account_id = workspace["defaultBillingAccountId"]
    assert topups(engine, account_id) == [cents]
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1000 + cents
    assert ledger_problems(services, account_id) == []


def test_without_a_payment_the_answer_is_402_with_terms_the_sdk_decodes(api, buyer):
    owner, workspace = buyer
    result = checkout(api, owner.key, workspace["id"], 201)
    assert result.status_code == 402 and result.headers["content-type"].startswith("application/json")
    required = decode_payment_required_header(result.headers["PAYMENT-REQUIRED"])
    assert result.json == required.model_dump(by_alias=True, exclude_none=True)
    assert required.x402_version == 2 and required.error == "PAYMENT-SIGNATURE header is required"
    assert required.resource.url.endswith(f"/workspaces/{workspace['id']}/billing/checkout/x402")
    [option] = required.accepts
    assert option.model_dump(by_alias=True) == {
        "scheme": "exact", "network": NETWORK, "asset": USDC, "amount": "2010000", "payTo": PAY_TO,
        "maxTimeoutSeconds": 300, "extra": {"name": "USDC", "version": "2"}}
    assert "PAYMENT-REQUIRED" in result.headers["Access-Control-Expose-Headers"]


def test_an_sdk_client_pays_and_the_top_up_is_credited_exactly_once(api, services, queue, engine, buyer, wallet,
                                                                     facilitator):
    owner, workspace = buyer
    header = wallet.pay(terms_of(api, owner.key, workspace["id"]))
    paid = checkout(api, owner.key, workspace["id"], header=header)
    assert paid.status_code == 202, paid.text
    accepted = responses.X402AcceptedShape.model_validate(paid.json)
    assert (accepted.kind, accepted.status, paid.headers["Location"]) == (
        "x402_settle", "queued", f"/operations/{accepted.id}")
    pending = read_checkout(api, owner.key, workspace["id"], accepted.checkoutId)
    assert (pending["provider"], pending["status"], pending["amountCents"], pending["payer"]) == (
        "x402", "pending", 500, wallet.address)
    assert topups(engine, workspace["defaultBillingAccountId"]) == []  # nothing before settlement

    assert settle_queued(services, queue) == 1
    assert ("tiers.recompute", {"account_id": workspace["defaultBillingAccountId"]}) in queue.sent
    done = api.call("GET", f"/operations/{accepted.id}", owner.key).json
    assert done["status"] == "succeeded" and done["result"]["amountCents"] == 500
    completed = read_checkout(api, owner.key, workspace["id"], accepted.checkoutId)
    assert completed["status"] == "completed" and completed["transaction"] == done["result"]["transaction"]
    assert facilitator.balance(NETWORK, PAY_TO) >= 5_000_000

    again = checkout(api, owner.key, workspace["id"], header=header)
    assert again.status_code == 202 and (again.json["id"], again.json["checkoutId"]) == (accepted.id,
                                                                                       accepted.checkoutId)
    receipt = decode_payment_response_header(again.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.transaction == completed["transaction"] and receipt.payer == wallet.address
    services.x402.settle(accepted.id)  # a redelivered task finds the operation finished
    assert_credited_once(api, services, engine, owner, workspace)


def test_the_same_header_sent_ten_times_at_once_credits_once(api, services, queue, engine, buyer, wallet,
                                                              facilitator):
    owner, workspace = buyer
    header = wallet.pay(terms_of(api, owner.key, workspace["id"]))
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: checkout(api, owner.key, workspace["id"], header=header), range(10)))
    assert {a.status_code for a in answers} <= {202, 409}, [a.text for a in answers]
    accepted = {(a.json["id"], a.json["checkoutId"]) for a in answers if a.status_code == 202}
    assert len(accepted) == 1, accepted
    settles_before = facilitator.settles()
    settle_queued(services, queue)
    assert facilitator.settles() == settles_before + 1
    again = checkout(api, owner.key, workspace["id"], header=header)
    assert (again.json["id"], again.json["checkoutId"]) == accepted.pop()
    listed = api.call("GET", f"/workspaces/{workspace['id']}/billing/checkouts", owner.key).json["data"]
    assert len(listed) == 1 and listed[0]["status"] == "completed"
    assert_credited_once(api, services, engine, owner, workspace)


def _retargeted(required, **changes):
    """The terms with the first option changed, as a confused or dishonest client might pay them."""
    option = required.accepts[0].model_copy(update=changes)
    return required.model_copy(update={"accepts": [option]})


REFUSALS = {
    "an amount for another top-up": (lambda w, r: w.pay(_retargeted(r, amount="4990000")),
                                     "authorization_value_mismatch"),
    "an authorization for less than the terms say": (lambda w, r: w.sign(r, value=4_990_000),
                                                     "authorization_value_mismatch"),
    "another asset": (lambda w, r: w.sign(_retargeted(r, asset=Account.create().address)), "asset_mismatch"),
    "another payee": (lambda w, r: w.pay(_retargeted(r, pay_to=Account.create().address)), "recipient_mismatch"),
    "another network": (lambda w, r: w.pay(_retargeted(r, network="eip155:8453", asset=NETWORKS["eip155:8453"].usdc)),
                        "invalid_network"),
    "an expired validBefore": (lambda w, r: w.sign(r, valid_before=int(time.time()) - 1), "valid_before"),
    "a signature from another key": (lambda w, r: w.sign(r, key=Account.create()), "payload_signature"),
    "a wrong EIP-712 domain name": (lambda w, r: w.sign(r, name="USD Coin"), "payload_signature"),
    "terms naming a wrong EIP-712 domain": (lambda w, r: w.pay(_retargeted(r, extra={"name": "USD Coin",
                                                                                      "version": "2"})),
                                            "eip712_domain_mismatch"),
    "a version 1 payload for another network": (lambda w, r: w.sign(_retargeted(
        r, network="eip155:8453", asset=NETWORKS["eip155:8453"].usdc), version=1), "invalid_network"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_a_payment_that_does_not_match_or_verify_is_refused_with_402_and_credits_nothing(
        case, api, services, queue, engine, buyer, wallet):
    owner, workspace = buyer
    make, reason = REFUSALS[case]
    refused = checkout(api, owner.key, workspace["id"], header=make(wallet, terms_of(api, owner.key, workspace["id"])))
    assert refused.status_code == 402, refused.text
    assert reason in refused.json["error"]
    assert reason in decode_payment_required_header(refused.headers["PAYMENT-REQUIRED"]).error
    assert Task.SETTLE_X402 not in [name for name, _ in queue.sent]
    assert topups(engine, workspace["defaultBillingAccountId"]) == []
    listed = api.call("GET", f"/workspaces/{workspace['id']}/billing/checkouts", owner.key).json["data"]
    assert all(c["status"] == "failed" and reason in c["failureReason"] for c in listed), listed
    assert ledger_problems(services, workspace["defaultBillingAccountId"]) == []


def test_a_payload_refused_for_lack_of_funds_goes_through_once_the_wallet_is_funded(
        api, services, queue, engine, buyer, facilitator):
    owner, workspace = buyer
    broke = Wallet()
    header = broke.pay(terms_of(api, owner.key, workspace["id"]))
    refused = checkout(api, owner.key, workspace["id"], header=header)
    assert refused.status_code == 402 and "insufficient_balance" in refused.json["error"], refused.text
    facilitator.fund(NETWORK, broke.address, 5_000_000)
    paid = checkout(api, owner.key, workspace["id"], header=header)
    assert paid.status_code == 202, paid.text
    settle_queued(services, queue)
    assert read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])["status"] == "completed"
    assert_credited_once(api, services, engine, owner, workspace)


@pytest.mark.parametrize("mode", ["timeout_before", "pending"])
def test_an_unknown_settlement_stays_pending_until_the_reconcile_job_settles_it_once(
        mode, api, services, queue, engine, buyer, wallet, facilitator):
    owner, workspace = buyer
    header = wallet.pay(terms_of(api, owner.key, workspace["id"]))
    paid = checkout(api, owner.key, workspace["id"], header=header)
    facilitator.script(mode)
    settle_queued(services, queue)
    pending = read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])
    assert pending["status"] == "pending" and topups(engine, workspace["defaultBillingAccountId"]) == []
    assert (pending["transaction"] is not None) == (mode == "pending")  # CDP reports the broadcast hash
    again = checkout(api, owner.key, workspace["id"], header=header)  # never a fresh 402
    assert again.status_code == 202 and again.json["checkoutId"] == paid.json["checkoutId"]
    assert "PAYMENT-RESPONSE" not in again.headers

    assert services.x402.reconcile(older_than=timedelta(0)) == 1
    assert settle_queued(services, queue) == 1
    completed = read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])
    assert completed["status"] == "completed"
    if mode == "pending":
        assert completed["transaction"] == pending["transaction"]
    assert services.x402.reconcile(older_than=timedelta(0)) == 0 and settle_queued(services, queue) == 0
    assert api.call("GET", f"/operations/{paid.json['id']}", owner.key).json["status"] == "succeeded"
    assert_credited_once(api, services, engine, owner, workspace)


def test_a_definite_settlement_failure_credits_nothing_and_the_checkout_reads_failed(
        api, services, queue, engine, buyer, wallet, facilitator):
    owner, workspace = buyer
    header = wallet.pay(terms_of(api, owner.key, workspace["id"]))
    paid = checkout(api, owner.key, workspace["id"], header=header)
    facilitator.script("drained")  # the payer moved the funds between verify and settle
    settle_queued(services, queue)
    failed = read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])
    assert failed["status"] == "failed" and "insufficient_balance" in failed["failureReason"]
    operation = api.call("GET", f"/operations/{paid.json['id']}", owner.key).json
    assert operation["status"] == "failed" and "insufficient_balance" in operation["error"]["detail"]
    again = checkout(api, owner.key, workspace["id"], header=header)
    assert again.status_code == 202 and again.json["id"] == paid.json["id"]
    assert decode_payment_response_header(again.headers["PAYMENT-RESPONSE"]).success is False
    assert services.x402.reconcile(older_than=timedelta(0)) == 0
    assert topups(engine, workspace["defaultBillingAccountId"]) == []
    assert ledger_problems(services, workspace["defaultBillingAccountId"]) == []


def test_a_transfer_whose_answer_was_lost_is_never_refused_and_ends_unconfirmed_not_credited(
        api, services, queue, engine, buyer, wallet, facilitator):
    owner, workspace = buyer
    paid = checkout(api, owner.key, workspace["id"], header=wallet.pay(terms_of(api, owner.key, workspace["id"])))
    facilitator.script("timeout_after")  # the transfer happened; the answer never came
    settle_queued(services, queue)
    services.x402.reconcile(older_than=timedelta(0))
    settle_queued(services, queue)  # the re-settle finds the nonce spent: maybe by our own first attempt
    assert read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])["status"] == "pending"
    services.x402.clock = lambda: time.time() + 300 + EXPIRY_GRACE_SECONDS + 1
    services.x402.reconcile(older_than=timedelta(0))
    settle_queued(services, queue)
    final = read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])
    assert final["status"] == "failed" and final["failureReason"].startswith("settlement_unconfirmed")
    assert topups(engine, workspace["defaultBillingAccountId"]) == []


def test_an_accepted_payment_the_facilitator_never_settled_expires_after_valid_before(
        api, services, queue, engine, buyer, wallet, facilitator):
    owner, workspace = buyer
    paid = checkout(api, owner.key, workspace["id"], header=wallet.pay(terms_of(api, owner.key, workspace["id"])))
    facilitator.script("timeout_before")
    settle_queued(services, queue)
    services.x402.clock = lambda: time.time() + 300 + EXPIRY_GRACE_SECONDS + 1
    services.x402.reconcile(older_than=timedelta(0))
    settles = facilitator.settles()
    settle_queued(services, queue)
    assert facilitator.settles() == settles  # a dead authorization is not sent again
    assert read_checkout(api, owner.key, workspace["id"], paid.json["checkoutId"])["status"] == "expired"
    assert api.call("GET", f"/operations/{paid.json['id']}", owner.key).json["status"] == "failed"
    assert topups(engine, workspace["defaultBillingAccountId"]) == []


def test_a_facilitator_down_while_verifying_answers_503_and_the_same_payment_can_be_sent_again(
        api, services, queue, engine, buyer, wallet, facilitator):
    owner, workspace = buyer
    header = wallet.pay(terms_of(api, owner.key, workspace["id"]))
    facilitator.verify_status = 502
    assert_problem(checkout(api, owner.key, workspace["id"], header=header), 503)
    facilitator.verify_status = None
    paid = checkout(api, owner.key, workspace["id"], header=header)
    assert paid.status_code == 202, paid.text
    settle_queued(services, queue)
    assert_credited_once(api, services, engine, owner, workspace)


def test_a_version_1_x_payment_header_is_accepted_and_answered_with_x_payment_response(
        api, services, queue, engine, buyer, wallet):
    owner, workspace = buyer
    header = wallet.sign(terms_of(api, owner.key, workspace["id"]), version=1)
    paid = checkout(api, owner.key, workspace["id"], header=header, name="X-PAYMENT")
    assert paid.status_code == 202, paid.text
    settle_queued(services, queue)
    again = checkout(api, owner.key, workspace["id"], header=header, name="X-PAYMENT")
    assert decode_payment_response_header(again.headers["X-PAYMENT-RESPONSE"]).success
    assert_credited_once(api, services, engine, owner, workspace)


def test_one_idempotency_key_can_carry_the_unpaid_and_the_paid_request(api, services, queue, engine, buyer,
                                                                       wallet):
    owner, workspace = buyer
    key = {"Idempotency-Key": "top-up-1"}
    first = checkout(api, owner.key, workspace["id"], **key)
    assert first.status_code == 402
    paid = checkout(api, owner.key, workspace["id"],
                    header=wallet.pay(decode_payment_required_header(first.headers["PAYMENT-REQUIRED"])), **key)
    assert paid.status_code == 202, paid.text
    settle_queued(services, queue)
    assert_credited_once(api, services, engine, owner, workspace)


def test_a_payment_accepted_for_one_workspace_is_refused_for_another(api, services, queue, engine, buyer, wallet):
    owner, workspace = buyer
    header = wallet.pay(terms_of(api, owner.key, workspace["id"]))
    assert checkout(api, owner.key, workspace["id"], header=header).status_code == 202
    thief = api.new_user("Thief")
    other = api.new_workspace(thief, "Other")
    assert_problem(checkout(api, thief.key, other["id"], header=header), 409)
    settle_queued(services, queue)
    assert topups(engine, other["defaultBillingAccountId"]) == []
    assert api.call("GET", f"/workspaces/{other['id']}/billing/checkouts", thief.key).json["data"] == []
    assert_credited_once(api, services, engine, owner, workspace)


@pytest.mark.parametrize("header", ["not base64!", base64.b64encode(b"{not json").decode(),
                                    base64.b64encode(b"[1, 2]").decode()])
def test_a_payment_header_that_is_not_base64_json_is_400(api, buyer, header):
    owner, workspace = buyer
    assert_problem(checkout(api, owner.key, workspace["id"], header=header), 400)


def test_a_json_payload_of_another_shape_is_402_with_the_reason(api, buyer):
    owner, workspace = buyer
    for payload, reason in (({"x402Version": 3}, "invalid_x402_version"), ({"x402Version": 2}, "invalid_payload")):
        header = base64.b64encode(json.dumps(payload).encode()).decode()
        refused = checkout(api, owner.key, workspace["id"], header=header)
        assert refused.status_code == 402 and refused.json["error"].startswith(reason), refused.text


@pytest.mark.parametrize("amount", [0, 1_000_001, 5.0, "500", True, None])
def test_the_amount_is_an_integer_of_cents_from_1_to_1_000_000(api, buyer, amount):
    owner, workspace = buyer
    result = api.call("POST", f"/workspaces/{workspace['id']}/billing/checkout/x402", owner.key,
                      json={"amountCents": amount})
    assert_problem(result, 422)


def test_only_the_owner_or_an_admin_may_top_up(api, buyer):
    owner, workspace = buyer
    admin, member, stranger = api.new_user("Admin"), api.new_user("Member"), api.new_user("Stranger")
    api.add_member(owner, workspace["id"], admin, "admin")
    api.add_member(owner, workspace["id"], member)
    assert checkout(api, admin.key, workspace["id"]).status_code == 402
    assert_problem(checkout(api, member.key, workspace["id"]), 403)
    assert_problem(api.operator("POST", f"/workspaces/{workspace['id']}/billing/checkout/x402",
                                json={"amountCents": 500}), 403)
    assert_problem(checkout(api, stranger.key, workspace["id"]), 404)


def test_the_relay_re_drives_an_unfinished_settlement_by_its_kind(api, services, queue, engine, buyer, wallet):
    owner, workspace = buyer
    paid = checkout(api, owner.key, workspace["id"], header=wallet.pay(terms_of(api, owner.key, workspace["id"])))
    queue.sent.clear()  # the message was lost
    services.relay.send_due(older_than=timedelta(0))
    assert (Task.SETTLE_X402, {"operation_id": paid.json["id"]}) in queue.sent
    queue.sent[:] = [sent for sent in queue.sent if sent == (Task.SETTLE_X402, {"operation_id": paid.json["id"]})]
    settle_queued(services, queue)
    assert services.operations.get(OPERATOR_CALLER, paid.json["id"]).status == "succeeded"
    assert_credited_once(api, services, engine, owner, workspace)


def test_the_per_network_defaults_are_pinned():
    sepolia, base = terms(X402Config(pay_to=PAY_TO)), terms(X402Config(pay_to=PAY_TO, network="eip155:8453"))
    assert (sepolia.chain_id, sepolia.asset, sepolia.eip712_name, sepolia.eip712_version) == (
        84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
    assert (base.chain_id, base.asset, base.eip712_name, base.eip712_version) == (
        8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin", "2")
    # the tokens' DOMAIN_SEPARATOR(), as computed from (name, version, chainId, verifyingContract)
    assert sepolia.domain_separator == "0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818"
    assert base.domain_separator == "0x02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f"
    custom = terms(X402Config(pay_to=PAY_TO, network="eip155:1", asset=USDC, eip712_name="X", eip712_version="1"))
    assert (custom.chain_id, custom.eip712_name) == (1, "X")
    with pytest.raises(ValueError):
        terms(X402Config(pay_to=PAY_TO, network="eip155:1"))


def test_amounts_are_cents_times_ten_thousand_atomic_units_without_floats(services):
    gateway = services.ctx.x402
    for cents in (1, 201, 1_019, 999_999, 1_000_000):
        assert gateway.requirements(cents).amount == str(cents) + "0000"


def test_the_openapi_document_describes_the_x402_checkout(api):
    document = api.client.simulate_get("/openapi.json").json
    post = document["paths"]["/workspaces/{workspaceId}/billing/checkout/x402"]["post"]
    assert "202" in post["responses"] and "PAYMENT-REQUIRED" in post["description"]
    assert "settlement_pending" in post["description"] and "403" in post["responses"]


def test_a_facilitator_that_cannot_be_reached_answers_503_and_no_reason_names_its_address(engine, queue, buyer, wallet):
    owner, workspace = buyer
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = X402Gateway(X402Config(pay_to=PAY_TO, network=NETWORK, facilitator_url=f"http://127.0.0.1:{port}",
                                     timeout_seconds=2.0))
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(), x402=gateway))
    unreachable = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {})))
    header = wallet.pay(terms_of(unreachable, owner.key, workspace["id"]))
    result = checkout(unreachable, owner.key, workspace["id"], header=header)
    assert_problem(result, 503)
    listed = unreachable.call("GET", f"/workspaces/{workspace['id']}/billing/checkouts", owner.key).json["data"]
    assert [c["failureReason"] for c in listed] == ["facilitator_unavailable: the facilitator did not answer "
                                                    "(connection failed)"]
    for shown in (result.json["detail"], listed[0]["failureReason"]):
        assert not any(leak in shown for leak in ("127.0.0.1", str(port), "ConnectError", "Errno")), shown
