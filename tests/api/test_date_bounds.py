"""Dates at the edges of the calendar: outside 1970-9999 (in UTC) they are 422 naming the field, never a 500."""
import pytest

from tests.api.checks import assert_problem, row_counts

OUTSIDE = {
    "year 1": "0001-01-01T00:00:00Z",
    "year 1969": "1969-12-31T23:59:59Z",
    "year 1 pushed before it by its offset": "0001-01-01T00:00:00+01:00",
    "year 9999 pushed past it by its offset": "9999-12-31T23:59:59-01:00",
}
WINDOW_READS = ["/workspaces/{ws}/billing/usage-overview", "/workspaces/{ws}/billing/transactions",
                "/workspaces/{ws}/billing/summary", "/billing-accounts/{account}/transactions",
                "/billing-accounts/{account}/summary"]


@pytest.fixture
def world(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)


def read(api, world, path: str, **params):
    owner, ws = world
    return api.call("GET", path.format(ws=ws["id"], account=ws["defaultBillingAccountId"]), owner.key,
                    params=params)


def overview(api, world, **params) -> dict:
    result = read(api, world, "/workspaces/{ws}/billing/usage-overview", **params)
    assert result.status_code == 200, result.text
    return result.json


@pytest.mark.parametrize("value", OUTSIDE.values(), ids=OUTSIDE.keys())
@pytest.mark.parametrize("field", ["from", "to"])
@pytest.mark.parametrize("path", WINDOW_READS)
def test_a_window_bound_outside_1970_to_9999_is_unprocessable_naming_it(api, world, path, field, value):
    body = assert_problem(read(api, world, path, **{field: value}), 422)
    assert [e["field"] for e in body["errors"]] == [field]
    assert "1970" in body["errors"][0]["message"] and "Traceback" not in str(body)


@pytest.mark.parametrize("value", OUTSIDE.values(), ids=OUTSIDE.keys())
def test_a_usage_event_outside_1970_to_9999_is_unprocessable_and_records_nothing(api, world, engine, queue, value):
    _, ws = world
    before = row_counts(engine), list(queue.sent)
    event = {"eventId": "e1", "metric": "tokens", "quantity": 1, "amountCents": 1, "occurredAt": value}
    result = api.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json={"events": [event]})
    assert [e["field"] for e in assert_problem(result, 422)["errors"]] == ["events[0].occurredAt"]
    assert (row_counts(engine), queue.sent) == before


def test_the_first_instant_of_1970_in_utc_is_a_usage_time_even_written_in_1969_local_time(api, world, services):
    _, ws = world
    events = [{"eventId": f"e{i}", "metric": "tokens", "quantity": 1, "amountCents": 1, "occurredAt": at}
              for i, at in enumerate(["1970-01-01T00:00:00Z", "1969-12-31T23:30:00-01:00"])]
    result = api.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json={"events": events})
    assert result.status_code == 202, result.text
    services.operations.apply(result.json["id"])
    found = overview(api, world, **{"from": "1970-01-01T00:00:00Z", "to": "1970-01-02T00:00:00Z"})
    assert (found["totalUsageCents"], found["series"][0]["events"]) == (2, 2)


@pytest.mark.parametrize("start", ["9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59+01:00"])
@pytest.mark.parametrize("granularity", ["day", "hour"])
def test_a_default_window_past_year_9999_ends_with_the_calendar(api, world, start, granularity):
    found = overview(api, world, **{"from": start, "granularity": granularity})
    assert found["to"] == "9999-12-31T23:59:59.999Z"
    assert found["series"] and found["series"][-1]["periodStart"].startswith("9999-12-31T")


def test_a_default_window_before_1970_starts_with_the_epoch(api, world):
    found = overview(api, world, to="1970-01-10T00:00:00Z")
    assert (found["from"], found["to"], len(found["series"])) == ("1970-01-01T00:00:00.000Z",
                                                                  "1970-01-10T00:00:00.000Z", 9)
    empty = overview(api, world, to="1970-01-01T00:00:00Z")
    assert (empty["from"], empty["series"], empty["totalUsageCents"]) == ("1970-01-01T00:00:00.000Z", [], 0)


@pytest.mark.parametrize("start", ["9999-12-30T00:00:00Z", "9999-12-31T23:30:00Z"])
@pytest.mark.parametrize("path", WINDOW_READS)
def test_windows_reaching_the_last_second_of_9999_are_read(api, world, path, start):
    result = read(api, world, path, **{"from": start, "to": "9999-12-31T23:59:59Z"})
    assert result.status_code == 200, result.text


@pytest.mark.parametrize("path", WINDOW_READS)
def test_an_ordinary_window_is_still_read(api, world, path):
    result = read(api, world, path, **{"from": "2026-11-01T00:00:00+02:00", "to": "2026-11-27T12:00:00Z"})
    assert result.status_code == 200, result.text
