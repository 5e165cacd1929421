"""GET /docs: one readable page over /openapi.json with every path of the contract, read offline."""
import html
import json
import re

import pytest
from falcon import testing

from api.app import create_app, routes
from api.docs_page import example
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests import contract
from tests.factories import OPERATOR_TOKEN

# Every path the contract (spec/API.md) names; the spec itself is read too where it is present.
CONTRACT_PATHS = {
    "/users", "/users/me", "/workspaces", "/workspaces/{workspaceId}", "/workspaces/{workspaceId}/members",
    "/billing-accounts", "/billing-accounts/{billingAccountId}", "/billing-accounts/{billingAccountId}/balance",
    "/billing-accounts/{billingAccountId}/summary", "/billing-accounts/{billingAccountId}/transactions",
    "/workspaces/{workspaceId}/billing/accounts", "/workspaces/{workspaceId}/billing/accounts/link",
    "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}/default",
    "/workspaces/{workspaceId}/billing/accounts/{billingAccountId}", "/workspaces/{workspaceId}/billing/balance",
    "/workspaces/{workspaceId}/billing/checkout", "/workspaces/{workspaceId}/billing/checkout/x402",
    "/workspaces/{workspaceId}/billing/credits", "/workspaces/{workspaceId}/billing/transactions",
    "/workspaces/{workspaceId}/billing/summary", "/workspaces/{workspaceId}/billing/usage-overview",
    "/workspaces/{workspaceId}/billing/usage", "/workspaces/{workspaceId}/rate-limits",
    "/workspaces/{workspaceId}/rate-limits/refresh", "/workspaces/{workspaceId}/rate-limits/check",
    "/webhooks/stripe", "/workspaces/{workspaceId}/billing/checkouts/{checkoutId}", "/operations/{operationId}",
    "/health", "/ready", "/openapi.json", "/docs", "/metrics",
}


FACILITATOR_PATHS = {"/verify", "/settle"}  # the x402 facilitator's, which the service calls


def contract_paths() -> set[str]:
    # The Wave 2 section writes the account's id as {id}; the document names it as everywhere else.
    named = {endpoint.split(" ", 1)[1].replace("/billing-accounts/{id}/", "/billing-accounts/{billingAccountId}/")
             for endpoint in contract.endpoints()}
    return CONTRACT_PATHS | (named - FACILITATOR_PATHS)


@pytest.fixture(scope="module")
def served(engine):
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=lambda *a, **k: True, config=Config()))
    client = testing.TestClient(create_app(services, OPERATOR_TOKEN, {}))
    return client.simulate_get("/docs"), client.simulate_get("/openapi.json").json


def test_the_page_is_html_for_anyone(served):
    page, _ = served
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!doctype html>") and "<title>" in page.text


def test_the_page_has_every_endpoint_of_the_document_and_every_path_of_the_contract(served):
    page, document = served
    shown = set(re.findall(r"data-endpoint='([A-Z]+ [^']+)'", page.text))
    assert shown == {f"{m.upper()} {html.escape(p)}" for p, methods in document["paths"].items() for m in methods}
    missing = {path for path in contract_paths() if f"<code>{html.escape(path)}</code>" not in page.text}
    assert missing == set()


def _section(page: str, endpoint: str) -> str:
    start = page.index(f"data-endpoint='{endpoint}'")
    return page[start:page.index("</section>", start)]


def test_each_endpoint_shows_who_parameters_body_response_and_a_json_example(served):
    page, document = served
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            section = _section(page.text, f"{method.upper()} {html.escape(path)}")
            assert html.escape(op["summary"]).replace("`", "") in re.sub(r"</?code>", "", section), (method, path)
            assert "<b>Who:</b> " + html.escape(op["x-who"]) in section
            for name in {p["name"] for p in op["parameters"]}:
                assert f"<code>{html.escape(name)}</code>" in section, (method, path, name)
            for status in op["responses"]:
                assert re.search(rf"<b>[0-9, ]*\b{status}\b", section), (method, path, status)
            if "requestBody" in op:
                assert "Request body" in section and "<th>field</th>" in section, (method, path)
                sample = re.search(r"<pre class=example>(.*?)</pre>", section, re.S)
                assert sample and isinstance(json.loads(html.unescape(sample[1])), dict), (method, path)


def test_the_credits_endpoint_reads_as_its_schema_says(served):
    section = _section(served[0].text, "POST /workspaces/{workspaceId}/billing/credits")
    assert re.search(r"<code>amountCents</code> <span class=req>required</span></td><td><code>integer</code></td>"
                     r"<td>1 to 100,000,000", section)
    assert "<b>202</b>" in section and "OperationShape" in section and "Goodwill credit" in section


def test_every_request_example_on_the_page_is_accepted_by_its_schema(services, served):
    _, document = served
    components = document["components"]["schemas"]
    checked = 0
    for _, resource in routes(services, {}):
        for method in ("post", "put", "patch"):
            d = getattr(getattr(resource, f"on_{method}", None), "endpoint_doc", None)
            if d is not None and d.body is not None:
                d.body.model_validate(example({"$ref": f"#/components/schemas/{d.body.__name__}"}, components))
                for sample in d.body.model_json_schema(by_alias=True).get("examples", []):
                    d.body.model_validate(sample)
                checked += 1
    assert checked >= 10


def test_nothing_on_the_page_is_fetched_from_elsewhere(served):
    text = served[0].text
    assert "<script" not in text and "@import" not in text and "<link" not in text and "<img" not in text
    fetched = re.findall(r"(?:src|href|action)\s*=\s*['\"]?([^'\" >]+)|url\(\s*['\"]?([^'\")]+)", text)
    assert [u for pair in fetched for u in pair if re.match(r"(?:https?:)?//", u)] == []
