"""Who may read and who may manage: members read, owners and admins manage, strangers see nothing."""
import pytest

from tests.api.checks import assert_problem, row_counts
from tests.factories import new_linked_account

NO_SUCH_WORKSPACE = "ws_" + "0" * 32
NO_SUCH_ACCOUNT = "ba_" + "0" * 32


def workspace_reads(ws_id: str) -> list[str]:
    base = f"/workspaces/{ws_id}"
    return [base, f"{base}/billing/accounts", f"{base}/billing/balance", f"{base}/billing/transactions",
            f"{base}/billing/summary"]


def workspace_writes(ws_id: str, account_id: str, user_id: str) -> list[tuple[str, str, dict | None]]:
    base = f"/workspaces/{ws_id}"
    return [("POST", f"{base}/billing/accounts", {"name": "Mine"}),
            ("POST", f"{base}/billing/accounts/link", {"billingAccountId": account_id}),
            ("POST", f"{base}/billing/accounts/{account_id}/default", None),
            ("DELETE", f"{base}/billing/accounts/{account_id}", None),
            ("POST", f"{base}/members", {"userId": user_id, "role": "admin"})]


@pytest.fixture
def team(api):
    """A workspace with an owner, an admin, a member, a second linked account, and a stranger."""
    owner, admin, member, stranger = (api.new_user(name) for name in ("Owner", "Admin", "Member", "Stranger"))
    ws = api.new_workspace(owner)
    api.add_member(owner, ws["id"], admin, "admin")
    api.add_member(owner, ws["id"], member, "member")
    extra = new_linked_account(api, owner, ws["id"], "Extra")
    return ws, owner, admin, member, stranger, extra


def test_members_read_balance_transactions_summary_and_linked_accounts(api, team):
    ws, owner, _, member, _, extra = team
    for path in workspace_reads(ws["id"]):
        result = api.call("GET", path, member.key)
        assert result.status_code == 200, (path, result.text)
    balance = api.call("GET", f"/workspaces/{ws['id']}/billing/balance", member.key).json
    assert (balance["billingAccountId"], balance["balanceCents"]) == (owner.default_account_id, 1000)
    accounts = api.call("GET", f"/workspaces/{ws['id']}/billing/accounts", member.key).json["data"]
    assert {a["id"] for a in accounts} == {owner.default_account_id, extra["id"]}
    assert [w["id"] for w in api.call("GET", "/workspaces", member.key).json["data"]] == [ws["id"]]


def test_members_cannot_link_create_set_default_unlink_or_add_members(api, team, engine):
    ws, owner, _, member, stranger, extra = team
    own = api.new_workspace(member, "Own")
    own_account = new_linked_account(api, member, own["id"])
    before = row_counts(engine)
    writes = workspace_writes(ws["id"], extra["id"], stranger.id)
    writes[1] = ("POST", f"/workspaces/{ws['id']}/billing/accounts/link", {"billingAccountId": own_account["id"]})
    for method, path, body in writes:
        assert_problem(api.call(method, path, member.key, json=body), 403)
    assert row_counts(engine) == before
    accounts = api.call("GET", f"/workspaces/{ws['id']}/billing/accounts", owner.key).json["data"]
    assert {(a["id"], a["isWorkspaceDefault"]) for a in accounts} == {(owner.default_account_id, True),
                                                                       (extra["id"], False)}


def test_admins_manage_billing_and_members(api, team):
    ws, owner, admin, _, stranger, extra = team
    base = f"/workspaces/{ws['id']}"
    created = api.call("POST", f"{base}/billing/accounts", admin.key, json={"name": "Admin's"})
    assert created.status_code == 201 and created.json["ownerUserId"] == admin.id
    linked = api.call("POST", f"{base}/billing/accounts/link", admin.key,
                      json={"billingAccountId": admin.default_account_id})
    assert linked.status_code == 201, linked.text
    made_default = api.call("POST", f"{base}/billing/accounts/{extra['id']}/default", admin.key)
    assert made_default.status_code == 200 and made_default.json["defaultBillingAccountId"] == extra["id"]
    assert api.call("DELETE", f"{base}/billing/accounts/{owner.default_account_id}", admin.key).status_code == 204
    added = api.call("POST", f"{base}/members", admin.key, json={"userId": stranger.id, "role": "member"})
    assert added.status_code == 201 and added.json == {"userId": stranger.id, "role": "member"}
    assert api.call("GET", f"{base}/billing/balance", stranger.key).status_code == 200


def test_an_admin_cannot_link_an_account_of_the_owner_it_does_not_own(api, team):
    ws, owner, admin, _, _, _ = team
    other = api.new_workspace(owner, "Other")
    owners_account = new_linked_account(api, owner, other["id"])
    result = api.call("POST", f"/workspaces/{ws['id']}/billing/accounts/link", admin.key,
                      json={"billingAccountId": owners_account["id"]})
    assert_problem(result, 404)


def test_a_non_member_gets_not_found_everywhere_on_the_workspace_like_a_missing_one(api, team, engine):
    ws, _, _, _, stranger, extra = team
    before = row_counts(engine)
    requests = [("GET", path, None) for path in workspace_reads(ws["id"])]
    requests += workspace_writes(ws["id"], extra["id"], stranger.id)
    for method, path, body in requests:
        answer = assert_problem(api.call(method, path, stranger.key, json=body), 404)
        missing = api.call(method, path.replace(ws["id"], NO_SUCH_WORKSPACE), stranger.key, json=body)
        assert answer == assert_problem(missing, 404), path
    assert row_counts(engine) == before
    assert api.call("GET", "/workspaces", stranger.key).json["data"] == []


@pytest.mark.parametrize("suffix", ["", "/balance", "/summary", "/transactions"])
def test_reading_another_users_billing_account_is_not_found_like_a_missing_one(api, suffix):
    owner, stranger = api.new_user(), api.new_user("Eve")
    foreign = api.call("GET", f"/billing-accounts/{owner.default_account_id}{suffix}", stranger.key)
    missing = api.call("GET", f"/billing-accounts/{NO_SUCH_ACCOUNT}{suffix}", stranger.key)
    garbage = api.call("GET", f"/billing-accounts/not-an-id{suffix}", stranger.key)
    assert assert_problem(foreign, 404) == assert_problem(missing, 404) == assert_problem(garbage, 404)
    assert api.call("GET", f"/billing-accounts/{owner.default_account_id}{suffix}", owner.key).status_code == 200


def test_members_cannot_read_the_owners_account_at_account_level(api, team):
    _, owner, _, member, _, _ = team
    assert_problem(api.call("GET", f"/billing-accounts/{owner.default_account_id}/balance", member.key), 404)


def test_list_endpoints_never_show_another_users_rows(api, team):
    ws, owner, admin, member, stranger, extra = team
    stranger_ws = api.new_workspace(stranger, "Theirs")
    new_linked_account(api, stranger, stranger_ws["id"], "Theirs too")
    mine = api.call("GET", "/billing-accounts", owner.key).json["data"]
    assert {a["id"] for a in mine} == {owner.default_account_id, extra["id"]}
    assert {a["ownerUserId"] for a in mine} == {owner.id}
    theirs = api.call("GET", "/billing-accounts", member.key).json["data"]
    assert [a["id"] for a in theirs] == [member.default_account_id]
    assert {w["id"] for w in api.call("GET", "/workspaces", owner.key).json["data"]} == {ws["id"]}
    assert {w["id"] for w in api.call("GET", "/workspaces", stranger.key).json["data"]} == {stranger_ws["id"]}
    linked = api.call("GET", f"/workspaces/{stranger_ws['id']}/billing/accounts", stranger.key).json["data"]
    assert {a["ownerUserId"] for a in linked} == {stranger.id}
    entries = api.call("GET", f"/workspaces/{ws['id']}/billing/transactions", admin.key).json["data"]
    assert {t["billingAccountId"] for t in entries} == {owner.default_account_id}


def test_only_the_operator_grants_credits(api, team):
    ws, owner, admin, member, _, _ = team
    for user in (owner, admin, member):
        result = api.call("POST", f"/workspaces/{ws['id']}/billing/credits", user.key, json={"amountCents": 100})
        assert_problem(result, 403)


def test_the_operator_reads_workspaces_but_does_not_manage_their_accounts(api, team):
    ws, owner, _, _, _, extra = team
    assert api.operator("GET", f"/workspaces/{ws['id']}/billing/balance").status_code == 200
    assert_problem(api.operator("POST", f"/workspaces/{ws['id']}/billing/accounts/{extra['id']}/default"), 403)
    assert_problem(api.operator("POST", f"/workspaces/{ws['id']}/billing/accounts", json={"name": "Op"}), 403)
