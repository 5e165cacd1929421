"""Users, default accounts and workspace binding through the real app on real PostgreSQL."""


def test_a_new_user_has_a_default_account_with_exactly_one_intro_credit(api):
    user = api.new_user()
    account = api.call("GET", f"/billing-accounts/{user.default_account_id}", user.key).json
    assert account["name"] == "Default" and account["isUserDefault"] is True
    assert account["balanceCents"] == 1000 and account["currency"] == "usd"
    page = api.call("GET", f"/billing-accounts/{user.default_account_id}/transactions", user.key).json
    assert [(t["kind"], t["amountCents"], t["balanceAfterCents"]) for t in page["data"]] == [("intro_credit", 1000, 1000)]
    assert page["nextCursor"] is None


def test_provisioning_again_does_not_credit_twice(api, services, queue):
    user = api.new_user()
    assert ("accounts.provision_default", {"user_id": user.id}) in queue.sent
    services.users.provision_default(user.id)
    services.users.provision_default(user.id)
    balance = api.call("GET", f"/billing-accounts/{user.default_account_id}/balance", user.key).json
    assert balance["balanceCents"] == 1000


def test_a_second_user_with_the_same_email_is_a_conflict(api):
    user = api.new_user()
    again = api.operator("POST", "/users", json={"email": user.email.upper()})
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


def test_users_me_returns_the_caller(api):
    user = api.new_user()
    me = api.call("GET", "/users/me", user.key)
    assert me.status_code == 200 and me.json["id"] == user.id
    assert me.json["defaultBillingAccountId"] == user.default_account_id


def test_a_workspace_without_an_account_binds_the_callers_default(api):
    user = api.new_user()
    ws = api.new_workspace(user)
    assert ws["defaultBillingAccountId"] == user.default_account_id
    linked = api.call("GET", f"/workspaces/{ws['id']}/billing/accounts", user.key).json["data"]
    assert [(a["id"], a["isWorkspaceDefault"]) for a in linked] == [(user.default_account_id, True)]


def test_a_workspace_cannot_bind_another_users_account(api):
    owner, stranger = api.new_user(), api.new_user("Eve")
    result = api.call("POST", "/workspaces", stranger.key,
                      json={"name": "Mine", "billingAccountId": owner.default_account_id})
    assert result.status_code == 404
    assert api.call("GET", "/workspaces", stranger.key).json["data"] == []


def test_missing_and_unknown_keys_are_unauthorized(api):
    assert api.call("GET", "/users/me").status_code == 401
    assert api.call("GET", "/users/me", "bk_nope").status_code == 401


def test_a_user_key_cannot_create_users(api):
    user = api.new_user()
    assert api.call("POST", "/users", user.key, json={"email": "x@example.com"}).status_code == 403


def test_the_backfill_provisions_a_user_left_without_a_default_account(api, services, engine):
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, email) VALUES ('usr_0000000000000000000000000000beef', :e)"),
                     {"e": "orphan-backfill@example.com"})
    assert services.users.backfill_default_accounts() >= 1
    services.users.backfill_default_accounts()
    with engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT a.balance_cents, count(e.id) FROM billing_accounts a JOIN ledger_entries e ON e.billing_account_id = a.id "
            "WHERE a.owner_user_id = 'usr_0000000000000000000000000000beef' AND a.is_user_default GROUP BY a.balance_cents")).all()
    assert rows == [(1000, 1)]
