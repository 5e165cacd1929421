"""Schemathesis over every operation of the served /openapi.json, in-process against the real app.

Real keys (the operator token where the operation is the operator's, else a real owner's key) and real ids
where parameters and body fields name them, so generated cases reach the handlers and not only 401 and 404.
Every answer must be documented (status, content type, headers, schema), invalid input must be refused, none
may be a 5xx, and every 4xx other than x402's 402 (whose body the x402 protocol fixes) is problem+json with
the contract's fields. No operation is excluded: the checkouts run against loopback stand-ins of Stripe and
of an x402 facilitator; the Stripe webhook is fuzzed too, though no generated body carries a valid signature.
"""
import uuid

import pytest
import schemathesis
from falcon import testing
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

from api.app import create_app
from domain.providers.stripe_gateway import StripeGateway
from domain.providers.x402_gateway import X402Config, X402Gateway
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.conftest import RecordingQueue
from tests.factories import OPERATOR_TOKEN, Api, new_linked_account
from tests.standins.stripe_api import StripeStandIn
from tests.standins.x402_facilitator import FacilitatorStandIn

PAY_TO = "0x1563915e194D8CfBA1943570603F7606A3115508"
PROBLEM_FIELDS = {"type", "title", "status", "detail"}


@pytest.fixture(scope="module")
def app(engine):
    """The real app with Stripe and the x402 facilitator behind loopback stand-ins, so the checkout
    endpoints run their whole path instead of being excluded. One for the module, as is its world: the
    operations run in the document's order on shared state, derandomized, so every run is the same."""
    stripe, facilitator = StripeStandIn().start(), FacilitatorStandIn().start()
    services = Services(Context(
        uow=lambda: UnitOfWork(engine), enqueue=RecordingQueue(), config=Config(intro_credit_cents=1000),
        stripe=StripeGateway("sk_test_standin", "whsec_test", stripe.url, timeout_seconds=2),
        x402=X402Gateway(X402Config(pay_to=PAY_TO, network="eip155:84532", facilitator_url=facilitator.url,
                                    timeout_seconds=2.0))))
    yield create_app(services, OPERATOR_TOKEN, {"database": lambda: None})
    stripe.stop()
    facilitator.stop()


@pytest.fixture(scope="module")
def world(app) -> dict:
    """An owner's key, and real ids by the names the document gives them: the owner's workspace, a second
    account linked to it, a checkout and an operation of the owner's, and a user to add as a member."""
    api = Api(testing.TestClient(app))
    owner, member = api.new_user("Owner"), api.new_user("Member")
    ws = api.new_workspace(owner)
    extra = new_linked_account(api, owner, ws["id"], "Extra")
    checkout = api.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key, json={
        "amountCents": 500, "successUrl": "https://app.example/ok", "cancelUrl": "https://app.example/no"})
    assert checkout.status_code == 201, checkout.text
    operation = api.call("POST", f"/workspaces/{ws['id']}/rate-limits/refresh", owner.key)
    assert operation.status_code == 202, operation.text
    endpoint = api.call("POST", f"/workspaces/{ws['id']}/webhook-endpoints", owner.key, json={
        "url": "https://1.1.1.1/hooks", "events": ["checkout.completed"]})
    assert endpoint.status_code == 201, endpoint.text
    return {"key": owner.key, "ids": {"workspaceId": ws["id"], "billingAccountId": extra["id"],
                                      "checkoutId": checkout.json["id"], "operationId": operation.json["id"],
                                      "userId": member.id, "endpointId": endpoint.json["id"]}}


def with_real_ids(case, ids: dict[str, str]) -> None:
    """Real ids in the path, and in a positive case also where a query parameter or body field is named
    after one (a negative case keeps what it negated: schemathesis could not tell it apart any more)."""
    def fed(values: dict) -> dict:
        return {name: ids[name] if name in ids and isinstance(value, str) else value
                for name, value in values.items()}
    if case.path_parameters:
        case.path_parameters = fed(case.path_parameters)
    if not case.meta.generation.mode.is_positive:
        return
    if case.query and fed(case.query) != case.query:
        case.query = fed(case.query)
    if isinstance(case.body, dict) and fed(case.body) != case.body:
        case.body = fed(case.body)


def with_fresh_idempotency_key(case) -> None:
    """A positive case's Idempotency-Key made unique: generated keys repeat ("0", "00"), and a repeated key
    with another body answers 409 from the idempotency layer before the handler runs (that layer has its
    own tests in test_idempotency_keys.py)."""
    if case.meta.generation.mode.is_positive and "Idempotency-Key" in (case.headers or {}):
        case.headers = {**case.headers, "Idempotency-Key": uuid.uuid4().hex}


def problem_json_for_errors(ctx, response, case) -> None:
    """Every 4xx but x402's 402 is RFC 9457 problem+json with the contract's fields (and errors for 422)."""
    if not 400 <= response.status_code < 500 or response.status_code == 402:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type == "application/problem+json", f"{response.status_code} answered as {content_type!r}"
    body = response.json()
    assert PROBLEM_FIELDS <= body.keys(), body
    assert body["status"] == response.status_code and body["title"] and body["detail"], body
    if response.status_code == 422:
        assert body.get("errors") and all(e["field"] and e["message"] for e in body["errors"]), body


def _no_database():
    raise AssertionError("serving /openapi.json touches no database")


# The document as the app serves it. Loaded at import, so every operation becomes its own test item;
# serving it needs no database (schemathesis' fixture-loaded schemas do not work under pytest 9).
schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(
    Services(Context(uow=_no_database, enqueue=lambda *a, **k: True, config=Config())), OPERATOR_TOKEN, {}))
# The coverage phase also sends each operation an undocumented method; one (answered 405 problem+json)
# proves the point, seven per operation would double the run.
schema.config.phases.coverage.unexpected_methods = {"PATCH"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, problem_json_for_errors]


# Bounded for CI: the coverage phase's boundary cases plus 10 fuzzed cases per operation (about 1,200
# requests, 25-60 s on this 2-core machine), derandomized so that every run sends the same requests.
@schema.parametrize()
@settings(max_examples=10, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_every_operation_answers_as_documented(case, app, world):
    with_real_ids(case, world["ids"])
    with_fresh_idempotency_key(case)
    key = OPERATOR_TOKEN if case.operation.definition.raw.get("x-who") == "operator" else world["key"]
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
