"""GET /openapi.json documents the contract's routes, and real answers fit the documented response models."""
import re
import uuid

import pytest
from pydantic.alias_generators import to_camel

from api import responses
from api.app import routes
from tests.factories import OPERATOR_TOKEN, new_linked_account

CONTRACT = {
    "/users": {"post"},
    "/users/me": {"get"},
    "/workspaces": {"get", "post"},
    "/workspaces/{workspaceId}": {"get"},
    "/workspaces/{workspaceId}/members": {"post"},
    "/billing-accounts": {"get"},
    "/billing-accounts/{billingAccountId}": {"get"},
    "/billing-accounts/{billingAccountId}/balance": {"get"},
    "/billing-accounts/{billingAccountId}/summary": {"get"},
    "/billing-accounts/{billingAccountId}/transactions": {"get"},
    "/workspaces/{workspaceId}/billing/accounts": {"get", "post"},
    "/workspaces/{workspaceId}/billing/accounts/link": {"post"},
    "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}/default": {"post"},
    "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}": {"delete"},
    "/workspaces/{workspaceId}/billing/balance": {"get"},
    "/workspaces/{workspaceId}/billing/credits": {"post"},
    "/workspaces/{workspaceId}/billing/transactions": {"get"},
    "/workspaces/{workspaceId}/billing/summary": {"get"},
    "/workspaces/{workspaceId}/billing/usage": {"post"},
    "/workspaces/{workspaceId}/billing/usage-overview": {"get"},
    "/workspaces/{workspaceId}/rate-limits": {"get"},
    "/workspaces/{workspaceId}/rate-limits/refresh": {"post"},
    "/workspaces/{workspaceId}/rate-limits/check": {"post"},
}
CONTRACT_NAMES = {"account_id": "billingAccountId"}


@pytest.fixture
def document(api) -> dict:
    result = api.client.simulate_get("/openapi.json")
    assert result.status_code == 200, result.text
    return result.json


def test_the_document_is_openapi_3_1_with_every_contract_path_in_camel_case(document):
    assert document["openapi"].startswith("3.1")
    for path, methods in CONTRACT.items():
        assert path in document["paths"], path
        assert methods <= document["paths"][path].keys(), path
        for method in methods:
            declared = {p["name"] for p in document["paths"][path][method]["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)


def test_every_route_the_app_serves_is_in_the_document(services, document):
    for template, resource in routes(services, {}):
        path = re.sub(r"{(\w+)}", lambda m: "{" + CONTRACT_NAMES.get(m[1], to_camel(m[1])) + "}", template)
        served = {name[3:] for name in dir(resource) if name.startswith("on_")}
        assert served <= document["paths"].get(path, {}).keys(), path


def test_request_schemas_in_the_document_are_the_validating_ones(document):
    credits = document["paths"]["/workspaces/{workspaceId}/billing/credits"]["post"]
    ref = credits["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False and schema["required"] == ["amountCents"]
    assert schema["properties"]["amountCents"].items() >= {"type": "integer", "maximum": 100_000_000}.items()
    assert "Idempotency-Key" in {p["name"] for p in credits["parameters"]}
    query = {p["name"] for p in document["paths"]["/workspaces/{workspaceId}/billing/transactions"]["get"]["parameters"]
             if p["in"] == "query"}
    assert {"limit", "cursor", "kind", "from", "to", "billingAccountId"} <= query


def documented_model(document: dict, template: str, method: str, status: int) -> type[responses.Shape] | None:
    """The response model the document names for this answer (None for an empty one)."""
    answer = document["paths"][template][method]["responses"][str(status)]
    content = answer.get("content")
    if content is None:
        return None
    ref = next(iter(content.values()))["schema"]["$ref"]
    return getattr(responses, ref.rsplit("/", 1)[1])


def test_the_answers_of_a_whole_flow_fit_the_documented_models(api, services, document):
    owner, member = api.new_user("Owner"), api.new_user("Member")
    ws = api.new_workspace(owner)
    extra = new_linked_account(api, owner, ws["id"], "Extra")
    ids = {"workspaceId": ws["id"], "billingAccountId": extra["id"]}
    flow = [
        ("post", "/users", OPERATOR_TOKEN, {"email": f"flow-{uuid.uuid4().hex}@example.com"}, 201),
        ("get", "/users/me", owner.key, None, 200),
        ("post", "/workspaces", owner.key, {"name": "Second"}, 201),
        ("get", "/workspaces", owner.key, None, 200),
        ("get", "/workspaces/{workspaceId}", owner.key, None, 200),
        ("post", "/workspaces/{workspaceId}/members", owner.key, {"userId": member.id, "role": "member"}, 201),
        ("get", "/billing-accounts", owner.key, None, 200),
        ("get", "/billing-accounts/{billingAccountId}", owner.key, None, 200),
        ("get", "/billing-accounts/{billingAccountId}/balance", owner.key, None, 200),
        ("get", "/billing-accounts/{billingAccountId}/summary", owner.key, None, 200),
        ("get", "/billing-accounts/{billingAccountId}/transactions", owner.key, None, 200),
        ("post", "/workspaces/{workspaceId}/billing/accounts", owner.key, {"name": "Third"}, 201),
        ("post", "/workspaces/{workspaceId}/billing/accounts/link", owner.key, {"billingAccountId": extra["id"]}, 200),
        ("post", "/workspaces/{workspaceId}/billing/credits", OPERATOR_TOKEN, {"amountCents": 500}, 202),
        ("get", "/workspaces/{workspaceId}/billing/accounts", member.key, None, 200),
        ("get", "/workspaces/{workspaceId}/billing/balance", member.key, None, 200),
        ("get", "/workspaces/{workspaceId}/billing/transactions", member.key, None, 200),
        ("get", "/workspaces/{workspaceId}/billing/summary", member.key, None, 200),
        ("post", "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}/default", owner.key, None, 200),
        ("delete", "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}", owner.key, None, 409),
        ("post", "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}/default", member.key, None, 403),
        ("get", "/billing-accounts/{billingAccountId}", member.key, None, 404),
        ("post", "/workspaces/{workspaceId}/billing/credits", OPERATOR_TOKEN, {"amountCents": 0}, 422),
        ("get", "/workspaces/{workspaceId}/billing/transactions", None, None, 401),
    ]
    for method, template, key, body, status in flow:
        result = api.call(method.upper(), template.format(**ids), key, json=body)
        assert result.status_code == status, (method, template, result.text)
        assert str(status) in document["paths"][template][method]["responses"], (method, template, status)
        model = documented_model(document, template, method, status)
        if status >= 400:
            assert model is responses.ProblemShape
        model.model_validate(result.json)


def test_an_operation_fits_the_documented_model(api, document):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    queued = api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": 1}).json
    result = api.operator("GET", f"/operations/{queued['id']}")
    assert result.status_code == 200
    documented_model(document, "/operations/{operationId}", "get", 200).model_validate(result.json)
