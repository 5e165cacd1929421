"""Billing settings: lowBalanceCents set by the owner or an admin, read by members; fields left out stay."""
from tests.api.checks import assert_problem


def test_low_balance_is_set_read_kept_when_left_out_and_cleared_with_null(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    path = f"/workspaces/{ws}/billing/settings"
    not_set_up = {"enabled": False, "thresholdCents": None, "amountCents": None, "maxPerDay": 3, "paymentMethod": None}
    assert api.call("GET", path, owner.key).json == {"workspaceId": ws, "lowBalanceCents": None,
                                                     "autoTopUp": not_set_up}
    assert api.call("PUT", path, owner.key, json={"lowBalanceCents": 250}).json["lowBalanceCents"] == 250
    assert api.call("PUT", path, owner.key, json={}).json["lowBalanceCents"] == 250
    assert api.call("GET", path, owner.key).json["lowBalanceCents"] == 250
    assert api.call("PUT", path, owner.key, json={"lowBalanceCents": None}).json["lowBalanceCents"] is None


def test_a_negative_fractional_or_textual_threshold_is_refused(api):
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    for bad in (-1, 1.5, "100", True):
        body = assert_problem(api.call("PUT", f"/workspaces/{ws}/billing/settings", owner.key,
                                       json={"lowBalanceCents": bad}), 422)
        assert body["errors"][0]["field"] == "lowBalanceCents"
