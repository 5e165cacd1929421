"""What members read and what owners and admins manage, beyond the status of each call."""
import pytest

from tests.api.checks import assert_problem, row_counts
from tests.factories import new_linked_account

# Each endpoint's status for every kind of caller, foreign ids and list contents: test_authorization_matrix.py.


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
