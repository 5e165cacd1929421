"""Linking, creating, defaulting and unlinking a workspace's billing accounts, and reads that follow the default."""
from tests.api.checks import assert_problem
from tests.factories import new_linked_account, post

NO_SUCH_ACCOUNT = "ba_" + "0" * 32


def linked_ids(api, user, workspace_id: str) -> dict[str, bool]:
    result = api.call("GET", f"/workspaces/{workspace_id}/billing/accounts", user.key)
    assert result.status_code == 200, result.text
    return {a["id"]: a["isWorkspaceDefault"] for a in result.json["data"]}


def default_of(api, user, workspace_id: str) -> str:
    return api.call("GET", f"/workspaces/{workspace_id}", user.key).json["defaultBillingAccountId"]


def test_creating_an_account_in_a_workspace_links_it_owned_by_the_caller_not_default_with_balance_zero(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    result = api.call("POST", f"/workspaces/{ws['id']}/billing/accounts", owner.key, json={"name": "Project X"})
    assert result.status_code == 201, result.text
    created = result.json
    assert created["name"] == "Project X" and created["ownerUserId"] == owner.id
    assert created["isWorkspaceDefault"] is False and created["isUserDefault"] is False
    assert created["balanceCents"] == 0 and created["currency"] == "usd" and created["linkedAt"]
    assert linked_ids(api, owner, ws["id"]) == {owner.default_account_id: True, created["id"]: False}
    detail = api.call("GET", f"/billing-accounts/{created['id']}", owner.key).json
    assert detail["linkedWorkspaceIds"] == [ws["id"]]
    assert api.call("GET", f"/billing-accounts/{created['id']}/transactions", owner.key).json["data"] == []


def test_linking_an_own_account_answers_201_and_linking_it_again_answers_200(api):
    owner = api.new_user()
    first, second = api.new_workspace(owner, "First"), api.new_workspace(owner, "Second")
    account = new_linked_account(api, owner, first["id"])
    path = f"/workspaces/{second['id']}/billing/accounts/link"
    linked = api.call("POST", path, owner.key, json={"billingAccountId": account["id"]})
    assert linked.status_code == 201, linked.text
    assert linked.json["id"] == account["id"] and linked.json["isWorkspaceDefault"] is False
    again = api.call("POST", path, owner.key, json={"billingAccountId": account["id"]})
    assert again.status_code == 200, again.text
    assert again.json == linked.json
    assert linked_ids(api, owner, second["id"]) == {owner.default_account_id: True, account["id"]: False}


def test_linking_another_users_account_is_not_found_like_an_account_that_does_not_exist(api):
    owner, stranger = api.new_user(), api.new_user("Eve")
    ws = api.new_workspace(owner)
    path = f"/workspaces/{ws['id']}/billing/accounts/link"
    answers = [assert_problem(api.call("POST", path, owner.key, json={"billingAccountId": account_id}), 404)
               for account_id in (stranger.default_account_id, NO_SUCH_ACCOUNT, "not-an-id")]
    assert answers[0] == answers[1] == answers[2]
    assert linked_ids(api, owner, ws["id"]) == {owner.default_account_id: True}


def test_only_a_linked_account_can_become_the_default(api):
    owner = api.new_user()
    first, second = api.new_workspace(owner, "First"), api.new_workspace(owner, "Second")
    unlinked = new_linked_account(api, owner, first["id"])
    result = api.call("POST", f"/workspaces/{second['id']}/billing/accounts/{unlinked['id']}/default", owner.key)
    assert_problem(result, 409)
    assert default_of(api, owner, second["id"]) == owner.default_account_id


def test_setting_the_default_answers_the_workspace_with_its_new_default(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    account = new_linked_account(api, owner, ws["id"])
    result = api.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{account['id']}/default", owner.key)
    assert result.status_code == 200, result.text
    assert result.json == ws | {"defaultBillingAccountId": account["id"]}
    assert linked_ids(api, owner, ws["id"]) == {owner.default_account_id: False, account["id"]: True}


def test_setting_as_default_an_account_that_does_not_exist_or_is_foreign_is_not_found(api):
    owner, stranger = api.new_user(), api.new_user("Eve")
    ws = api.new_workspace(owner)
    for account_id in (NO_SUCH_ACCOUNT, "garbage", stranger.default_account_id):
        result = api.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{account_id}/default", owner.key)
        assert_problem(result, 404)
    assert default_of(api, owner, ws["id"]) == owner.default_account_id


def test_the_default_account_cannot_be_unlinked(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    result = api.call("DELETE", f"/workspaces/{ws['id']}/billing/accounts/{owner.default_account_id}", owner.key)
    assert_problem(result, 409)
    assert linked_ids(api, owner, ws["id"]) == {owner.default_account_id: True}


def test_unlinking_an_account_that_is_not_linked_is_not_found(api):
    owner = api.new_user()
    first, second = api.new_workspace(owner, "First"), api.new_workspace(owner, "Second")
    elsewhere = new_linked_account(api, owner, first["id"])
    for account_id in (elsewhere["id"], NO_SUCH_ACCOUNT, "garbage", "nul\x00byte"):
        assert_problem(api.call("DELETE", f"/workspaces/{second['id']}/billing/accounts/{account_id}", owner.key), 404)
    assert linked_ids(api, owner, first["id"]) == {owner.default_account_id: True, elsewhere["id"]: False}


def test_unlinking_a_non_default_account_answers_204_and_removes_only_that_link(api):
    owner = api.new_user()
    first, second = api.new_workspace(owner, "First"), api.new_workspace(owner, "Second")
    account = new_linked_account(api, owner, first["id"])
    api.call("POST", f"/workspaces/{second['id']}/billing/accounts/link", owner.key,
             json={"billingAccountId": account["id"]})
    result = api.call("DELETE", f"/workspaces/{first['id']}/billing/accounts/{account['id']}", owner.key)
    assert result.status_code == 204 and result.text == ""
    assert linked_ids(api, owner, first["id"]) == {owner.default_account_id: True}
    assert api.call("GET", f"/billing-accounts/{account['id']}", owner.key).json["linkedWorkspaceIds"] == [second["id"]]
    assert_problem(api.call("DELETE", f"/workspaces/{first['id']}/billing/accounts/{account['id']}", owner.key), 404)


def test_the_old_default_can_be_unlinked_once_another_account_is_default(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    account = new_linked_account(api, owner, ws["id"])
    api.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{account['id']}/default", owner.key)
    result = api.call("DELETE", f"/workspaces/{ws['id']}/billing/accounts/{owner.default_account_id}", owner.key)
    assert result.status_code == 204, result.text
    assert linked_ids(api, owner, ws["id"]) == {account["id"]: True}


def test_workspace_balance_transactions_and_summary_follow_the_default_account(api, services):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    account = new_linked_account(api, owner, ws["id"])
    post(services, account["id"], 700)
    post(services, account["id"], -200)
    base = f"/workspaces/{ws['id']}/billing"

    def reads() -> tuple[dict, dict, dict]:
        return tuple(api.call("GET", f"{base}/{name}", owner.key).json
                     for name in ("balance", "transactions", "summary"))

    balance, page, summary = reads()
    assert (balance["billingAccountId"], balance["balanceCents"], balance["workspaceId"]) == (
        owner.default_account_id, 1000, ws["id"])
    assert [t["kind"] for t in page["data"]] == ["intro_credit"]
    assert (summary["billingAccountId"], summary["balanceCents"], summary["transactionCount"]) == (
        owner.default_account_id, 1000, 1)

    api.call("POST", f"{base}/accounts/{account['id']}/default", owner.key)
    balance, page, summary = reads()
    assert (balance["billingAccountId"], balance["balanceCents"]) == (account["id"], 500)
    assert [(t["billingAccountId"], t["amountCents"]) for t in page["data"]] == [
        (account["id"], -200), (account["id"], 700)]
    assert (summary["billingAccountId"], summary["balanceCents"], summary["totalCreditedCents"],
            summary["totalDebitedCents"], summary["transactionCount"]) == (account["id"], 500, 700, 200, 2)
    assert summary["byKind"] == {"credit_grant": {"count": 1, "amountCents": 700},
                                 "usage": {"count": 1, "amountCents": -200}}

    api.call("POST", f"{base}/accounts/{owner.default_account_id}/default", owner.key)
    assert reads()[0]["billingAccountId"] == owner.default_account_id


def test_workspace_transactions_can_show_another_linked_account_but_never_an_unlinked_one(api, services):
    owner, stranger = api.new_user(), api.new_user("Eve")
    ws, other = api.new_workspace(owner), api.new_workspace(owner, "Other")
    account = new_linked_account(api, owner, ws["id"])
    unlinked = new_linked_account(api, owner, other["id"])
    post(services, account["id"], 321)
    path = f"/workspaces/{ws['id']}/billing/transactions"
    picked = api.call("GET", path, owner.key, params={"billingAccountId": account["id"]})
    assert picked.status_code == 200, picked.text
    assert [(t["billingAccountId"], t["amountCents"]) for t in picked.json["data"]] == [(account["id"], 321)]
    for account_id in (unlinked["id"], stranger.default_account_id, NO_SUCH_ACCOUNT, "garbage", "nul\x00byte"):
        assert_problem(api.call("GET", path, owner.key, params={"billingAccountId": account_id}), 404)


def test_a_workspace_created_with_an_own_account_binds_that_account(api):
    owner = api.new_user()
    first = api.new_workspace(owner)
    account = new_linked_account(api, owner, first["id"])
    ws = api.new_workspace(owner, "Bound", billingAccountId=account["id"])
    assert ws["defaultBillingAccountId"] == account["id"]
    assert linked_ids(api, owner, ws["id"]) == {account["id"]: True}
