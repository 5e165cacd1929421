"""Every invalid input answers 4xx problem+json and writes nothing."""
import json

import pytest

from tests.api.checks import assert_problem, row_counts
from tests.factories import OPERATOR_TOKEN

BAD_AMOUNTS = ['"5"', "5.0", "true", "false", "null", "-5", "0", "100000001", str(2 ** 70), "1e400", "[5]", '{"v": 5}']


@pytest.fixture
def world(api, engine, queue):
    """A user and a workspace; reads back what a test must prove unchanged."""
    owner = api.new_user()
    ws = api.new_workspace(owner)

    def state() -> tuple:
        balance = api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"]
        return row_counts(engine), balance, list(queue.sent)

    return owner, ws, state


def send(api, method: str, path: str, key: str, body: bytes | str, content_type: str = "application/json"):
    return api.call(method, path, key, body=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_a_credit_amount_that_is_not_a_positive_integer_within_the_limit_is_unprocessable(api, world, amount):
    _, ws, state = world
    before = state()
    raw = f'{{"amountCents": {amount}}}'
    body = assert_problem(send(api, "POST", f"/workspaces/{ws['id']}/billing/credits", OPERATOR_TOKEN, raw), 422)
    assert [e["field"] for e in body["errors"]] == ["amountCents"]
    assert state() == before


def test_the_largest_single_credit_is_accepted(api, world):
    _, ws, _ = world
    result = api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": 100_000_000})
    assert result.status_code == 202, result.text


@pytest.mark.parametrize("body, fields", [
    ({"amountCents": 5, "currency": "usd"}, {"currency"}),
    ({"amount_cents": 5}, {"amount_cents", "amountCents"}),
    ({}, {"amountCents"}),
    ({"description": "no amount"}, {"amountCents"}),
    ({"amountCents": 5, "description": 7}, {"description"}),
    ({"amountCents": 5, "description": "x" * 501}, {"description"}),
    ({"amountCents": 5, "description": "nul \x00 byte"}, {"description"}),
])
def test_credit_bodies_with_unknown_missing_or_wrong_fields_are_unprocessable(api, world, body, fields):
    _, ws, state = world
    before = state()
    result = api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json=body)
    assert {e["field"] for e in assert_problem(result, 422)["errors"]} == fields
    assert state() == before


@pytest.mark.parametrize("raw", ["[]", '"x"', "5", "null", '[{"amountCents": 5}]'])
def test_a_body_that_is_not_an_object_is_unprocessable(api, world, raw):
    _, ws, state = world
    before = state()
    assert_problem(send(api, "POST", f"/workspaces/{ws['id']}/billing/credits", OPERATOR_TOKEN, raw), 422)
    assert state() == before


@pytest.mark.parametrize("raw", [
    '{"amountCents": 5', "{amountCents: 5}", "{'amountCents': 5}", '{"amountCents": 5,}',
    '{"amountCents": NaN}', '{"amountCents": Infinity}', '{"amountCents": -Infinity}',
    '{"amountCents": 5, "amountCents": 6}', '{"amountCents": 5} {"amountCents": 6}',
    b'{"description": "\xff\xfe", "amountCents": 5}',
    "[" * 10_000 + "]" * 10_000,
])
def test_malformed_json_is_a_bad_request(api, world, raw):
    _, ws, state = world
    before = state()
    result = send(api, "POST", f"/workspaces/{ws['id']}/billing/credits", OPERATOR_TOKEN, raw)
    assert_problem(result, 400)
    assert state() == before


def test_an_empty_body_is_unprocessable_for_its_missing_fields(api, world):
    _, ws, state = world
    before = state()
    body = assert_problem(send(api, "POST", f"/workspaces/{ws['id']}/billing/credits", OPERATOR_TOKEN, ""), 422)
    assert [e["field"] for e in body["errors"]] == ["amountCents"]
    assert state() == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_json_by_content_type_is_a_bad_request(api, world, content_type):
    _, ws, state = world
    before = state()
    path = f"/workspaces/{ws['id']}/billing/credits"
    assert_problem(send(api, "POST", path, OPERATOR_TOKEN, '{"amountCents": 5}', content_type), 400)
    assert state() == before


def test_a_body_over_64_kib_is_too_large(api, world):
    owner, ws, state = world
    before = state()
    padding = "x" * (64 * 1024)
    body = {"amountCents": 5, "description": padding}
    assert_problem(api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json=body), 413)
    result = api.call("POST", "/workspaces", owner.key, json={"name": padding})
    assert_problem(result, 413)
    assert state() == before


def test_a_body_just_under_the_limit_is_read(api, world):
    owner, _, _ = world
    raw = json.dumps({"name": "x" * 10})
    raw = raw[:-1] + " " * (64 * 1024 - len(raw)) + "}"
    assert len(raw) == 64 * 1024
    assert send(api, "POST", "/workspaces", owner.key, raw).status_code == 201


@pytest.mark.parametrize("body, fields", [
    ({"email": "no-at-sign.example.com"}, {"email"}),
    ({"email": "two@@example.com"}, {"email"}),
    ({"email": "nul\x00@example.com"}, {"email"}),
    ({"email": 5}, {"email"}),
    ({}, {"email"}),
    ({"email": "ok@example.com", "role": "admin"}, {"role"}),
    ({"email": "ok@example.com", "name": ""}, {"name"}),
    ({"email": "ok@example.com", "name": "nul\x00"}, {"name"}),
])
def test_invalid_user_bodies_are_unprocessable(api, world, body, fields):
    _, _, state = world
    before = state()
    assert {e["field"] for e in assert_problem(api.operator("POST", "/users", json=body), 422)["errors"]} == fields
    assert state() == before


@pytest.mark.parametrize("body, fields", [
    ({}, {"name"}),
    ({"name": ""}, {"name"}),
    ({"name": "x" * 201}, {"name"}),
    ({"name": 5}, {"name"}),
    ({"name": "Acme", "plan": "pro"}, {"plan"}),
    ({"name": "nul\x00byte"}, {"name"}),
    ({"name": "Acme", "billingAccountId": 5}, {"billingAccountId"}),
])
def test_invalid_workspace_bodies_are_unprocessable(api, world, body, fields):
    owner, _, state = world
    before = state()
    answer = assert_problem(api.call("POST", "/workspaces", owner.key, json=body), 422)
    assert {e["field"] for e in answer["errors"]} == fields
    assert state() == before


@pytest.mark.parametrize("suffix, body", [
    ("/billing/accounts", {"name": ""}),
    ("/billing/accounts", {"name": "nul\x00byte"}),
    ("/billing/accounts", {"name": "Ok", "balanceCents": 100}),
    ("/billing/accounts/link", {}),
    ("/billing/accounts/link", {"billingAccountId": ["ba_1"]}),
    ("/members", {"userId": "usr_x", "role": "owner"}),
    ("/members", {"role": "member"}),
])
def test_invalid_workspace_billing_bodies_are_unprocessable(api, world, suffix, body):
    owner, ws, state = world
    before = state()
    assert_problem(api.call("POST", f"/workspaces/{ws['id']}{suffix}", owner.key, json=body), 422)
    assert state() == before


@pytest.mark.parametrize("path", [
    "/billing-accounts/nope", "/billing-accounts/ba_123", "/billing-accounts/BA_" + "0" * 32 + "/balance",
    "/billing-accounts/ba_" + "g" * 32 + "/summary", "/billing-accounts/%00/transactions",
    "/workspaces/nope", "/workspaces/ws_123/billing/balance",
    "/workspaces/ws_" + "0" * 31 + "%00/billing/accounts", "/operations/nope", "/operations/op_" + "0" * 32,
])
def test_ids_that_do_not_parse_or_name_nothing_are_not_found(api, world, path):
    owner, _, state = world
    before = state()
    assert_problem(api.call("GET", path, owner.key), 404)
    assert state() == before


def test_posting_to_a_workspace_id_that_does_not_parse_is_not_found_and_writes_nothing(api, world):
    owner, _, state = world
    before = state()
    assert_problem(api.operator("POST", "/workspaces/nope/billing/credits", json={"amountCents": 5}), 404)
    assert_problem(api.call("POST", "/workspaces/nope/billing/accounts", owner.key, json={"name": "x"}), 404)
    assert_problem(api.call("POST", "/workspaces", owner.key, json={"name": "x", "billingAccountId": "nope"}), 404)
    member = {"userId": owner.id, "role": "admin"}
    assert_problem(api.call("POST", "/workspaces/nope/members", owner.key, json=member), 404)
    assert state() == before


def test_missing_or_unknown_keys_are_unauthorized_and_write_nothing(api, world):
    _, ws, state = world
    before = state()
    path = f"/workspaces/{ws['id']}/billing/credits"
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Bearer " + "k" * 5000}):
        result = api.call("POST", path, json={"amountCents": 5}, headers=headers)
        assert_problem(result, 401)
        assert result.headers["www-authenticate"].startswith("Bearer")
    assert state() == before


@pytest.mark.parametrize("digits", [41, 5000, 60_000])
def test_an_integer_of_thousands_of_digits_is_over_the_limit_not_a_python_setting(api, world, digits):
    owner, ws, state = world
    before = state()
    for literal in ("9" * digits, "-" + "9" * digits):
        result = send(api, "POST", f"/workspaces/{ws['id']}/billing/credits", OPERATOR_TOKEN,
                      '{"amountCents": %s}' % literal)
        body = assert_problem(result, 422)
        assert [e["field"] for e in body["errors"]] == ["amountCents"]
        assert "set_int_max_str_digits" not in result.text and "4300" not in result.text
    assert state() == before


@pytest.mark.parametrize("method,path,status,title", [
    ("GET", "/no-such-thing", 404, "Not Found"),
    ("PUT", "/users/me", 405, "Method Not Allowed"),
    ("DELETE", "/workspaces", 405, "Method Not Allowed")])
def test_unknown_routes_and_methods_are_titled_like_every_other_problem(api, world, method, path, status, title):
    owner, _, _ = world
    body = assert_problem(api.call(method, path, owner.key), status)
    assert body["title"] == title and not body["title"][0].isdigit()
