"""Assertions shared by the API tests: problem+json answers, and "nothing was written"."""
import orjson
from sqlalchemy import Engine, text

TABLES = ("users", "api_keys", "billing_accounts", "ledger_entries", "workspaces",
          "workspace_billing_accounts", "workspace_members", "operations")


def assert_problem(result, status: int) -> dict:
    """The answer is an RFC 9457 problem with this status; 422 also names the fields."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/problem+json"
    body = result.json
    assert result.text == orjson.dumps(body).decode()  # rendered as every other answer
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status and body["title"] and body["detail"]
    if status == 422:
        assert body["errors"] and all(e["field"] and e["message"] for e in body["errors"]), body
    return body


def row_counts(engine: Engine, tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    with engine.connect() as conn:
        return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in tables}


def ledger_problems(services, account_id: str) -> list[str]:
    """The audit's findings about one account (the audit covers the whole test database)."""
    return [problem for problem in services.audit.problems() if account_id in problem]


def all_transactions(api, key: str, account_id: str) -> list[dict]:
    """Every transaction of an account, newest first, following cursors."""
    found, params = [], {"limit": "200"}
    while True:
        page = api.call("GET", f"/billing-accounts/{account_id}/transactions", key, params=params).json
        found += page["data"]
        if page["nextCursor"] is None:
            return found
        params = {"limit": "200", "cursor": page["nextCursor"]}
