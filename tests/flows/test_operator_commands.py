"""`billing credit`, `billing tiers refresh` and `billing reconcile` as an operator runs them, against the
stack's database and broker: the same services as the API, answers in one line when something is wrong."""
import json
import uuid

from sqlalchemy import text

from domain.models import Caller
from domain.providers.stripe_gateway import StripeGateway
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.factories import post
from tests.processes import wait_for_operations


def _workspace(stack):
    owner = stack.api.new_user()
    return owner, stack.api.new_workspace(owner)


def _balance(stack, owner, workspace) -> int:
    return stack.api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json["balanceCents"]


def _one_line_error(done, expected: str) -> None:
    assert done.returncode != 0 and done.stdout == "", done
    assert done.stderr == expected + "\n", done.stderr


def test_billing_credit_grants_like_the_api_and_waits_until_the_worker_applied_it(stack):
    owner, workspace = _workspace(stack)
    key = f"grant-{uuid.uuid4()}"
    done = stack.billing("credit", workspace["id"], "2500", "--description", "goodwill", "--idempotency-key", key,
                         "--wait")
    assert done.returncode == 0, done.stderr
    op = json.loads(done.stdout)
    assert (op["kind"], op["status"]) == ("credit", "succeeded")
    assert (op["result"]["amountCents"], op["result"]["balanceAfterCents"]) == (2500, 3500)
    assert stack.api.operator("GET", f"/operations/{op['id']}").json == op

    again = stack.billing("credit", workspace["id"], "2500", "--description", "goodwill", "--idempotency-key", key)
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == op["id"]
    other = stack.billing("credit", workspace["id"], "2500", "--idempotency-key", key)  # another body
    _one_line_error(other, "billing: this Idempotency-Key was used with a different request")
    assert _balance(stack, owner, workspace) == 3500
    newest = stack.api.call("GET", f"/workspaces/{workspace['id']}/billing/transactions", owner.key).json["data"]
    assert [(t["kind"], t["amountCents"], t["description"]) for t in newest[:2]] == [
        ("credit_grant", 2500, "goodwill"), ("intro_credit", 1000, newest[1]["description"])]


def test_a_key_used_over_http_means_the_same_request_to_billing_credit(stack, engine):
    """One key space for the API and the CLI: never another request's operation, on either path."""
    owner, one = _workspace(stack)
    two = stack.api.new_workspace(owner, "Two")
    key = f"shared-{uuid.uuid4()}"
    over_http = stack.api.operator("POST", f"/workspaces/{one['id']}/billing/credits", json={"amountCents": 700},
                                   headers={"Idempotency-Key": key})
    assert over_http.status_code == 202, over_http.text
    _one_line_error(stack.billing("credit", two["id"], "4444", "--idempotency-key", key),
                    "billing: this Idempotency-Key was used with a different request")
    same = stack.billing("credit", one["id"], "700", "--idempotency-key", key)
    assert same.returncode == 0 and json.loads(same.stdout)["id"] == over_http.json["id"], same.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM operations WHERE workspace_id = ANY(:w)"),
                            {"w": [one["id"], two["id"]]}).scalar() == 1


def test_billing_credit_answers_one_line_for_an_unknown_workspace(stack):
    _one_line_error(stack.billing("credit", f"ws_{uuid.uuid4().hex}", "100"), "billing: workspace not found")


def _stale_tier1(stack, services, owner, workspace) -> None:
    """A stored `free` tier that a top-up made stale, as if the recompute message was lost."""
    path = f"/workspaces/{workspace['id']}/rate-limits"
    assert stack.api.call("GET", path, owner.key).json["tier"] == "free"
    post(services, workspace["defaultBillingAccountId"], 600, kind="stripe_topup")
    assert stack.api.call("GET", path, owner.key).json["tier"] == "free"


def test_billing_tiers_refresh_recomputes_one_workspace_or_every_account(stack, services):
    owner, workspace = _workspace(stack)
    _stale_tier1(stack, services, owner, workspace)
    done = stack.billing("tiers", "refresh", workspace["id"], "--wait")
    assert done.returncode == 0, done.stderr
    op = json.loads(done.stdout)
    assert (op["kind"], op["status"], op["result"]["tier"]) == ("tier_refresh", "succeeded", "tier1")

    other_owner, other = _workspace(stack)
    _stale_tier1(stack, services, other_owner, other)
    everything = stack.billing("tiers", "refresh", "--all")
    assert everything.returncode == 0, everything.stderr
    assert int(everything.stdout.split()[4]) >= 2, everything.stdout  # "recomputed the tiers of N ..."
    assert stack.api.call("GET", f"/workspaces/{other['id']}/rate-limits", other_owner.key).json["tier"] == "tier1"


def test_billing_reconcile_credits_a_paid_checkout_whose_webhook_never_came(stack, engine, stripe_api):
    owner, workspace = _workspace(stack)
    gateway = StripeGateway("sk_test_cli", "whsec_cli", stripe_api.url, timeout_seconds=2)
    stripe = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=lambda *a, **k: True, config=Config(),
                              stripe=gateway)).stripe
    checkout = stripe.create(Caller(owner.id), workspace["id"], 1500, "https://app.example/ok",
                             "https://app.example/no", None)
    stripe_api.pay(checkout.provider_ref)  # paid at Stripe; its webhook is lost
    env = {"STRIPE_API_KEY": "sk_test_cli", "STRIPE_API_BASE": stripe_api.url}

    done = stack.billing("reconcile", "--provider", "stripe", "--older-than", "0", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stripe: reconciled ") and "x402" not in done.stdout, done.stdout
    assert _balance(stack, owner, workspace) == 2500
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM checkouts WHERE id = :id"), {"id": checkout.id}).scalar()
        topups = conn.execute(text("SELECT count(*) FROM ledger_entries WHERE billing_account_id = :a AND "
                                   "kind = 'stripe_topup'"), {"a": workspace["defaultBillingAccountId"]}).scalar()
    assert (status, topups) == ("completed", 1)


def test_billing_reconcile_skips_an_unconfigured_stripe_unless_asked_for_it(stack):
    done = stack.billing("reconcile")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "stripe: skipped, not configured (STRIPE_API_KEY)" and lines[1].startswith("x402: reconciled ")
    _one_line_error(stack.billing("reconcile", "--provider", "stripe"),
                    "billing: configuration error: STRIPE_API_KEY is not set")


def test_billing_grants_and_holds_show_and_settle_what_the_api_does(stack, engine):
    owner, workspace = _workspace(stack)
    ws = workspace["id"]
    credit = stack.api.operator("POST", f"/workspaces/{ws}/billing/credits", json={
        "amountCents": 700, "priority": 5, "expiresAt": "2099-01-01T00:00:00Z"})
    assert credit.status_code == 202
    assert wait_for_operations(engine, [credit.json["id"]]) == {credit.json["id"]: "succeeded"}
    listed = stack.billing("grants", ws)
    assert listed.returncode == 0, listed.stderr
    assert [(g["amountCents"], g["priority"], g["source"]) for g in map(json.loads, listed.stdout.splitlines())] == [
        (700, 5, "operator"), (1000, 50, "intro")]
    assert stack.billing("grants", ws, "--status", "expired").stdout == ""

    kept, released, expiring = (stack.api.operator("POST", f"/workspaces/{ws}/billing/holds",
                                                   json={"amountCents": 100}).json["id"] for _ in range(3))
    done = stack.billing("holds", "release", ws, released)
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "released", done.stderr
    with engine.begin() as conn:
        conn.execute(text("UPDATE holds SET expires_at = now() WHERE id = :id"), {"id": expiring})
    expired = stack.billing("expire")
    assert expired.returncode == 0 and "released 1 expired hold(s)" in expired.stdout, expired.stderr
    shown = {h["id"]: h["status"] for h in map(json.loads, stack.billing("holds", "list", ws).stdout.splitlines())}
    assert shown == {kept: "active", released: "released", expiring: "expired"}
    _one_line_error(stack.billing("holds", "release", ws, "hold_" + "0" * 32), "billing: hold not found")
    assert stack.billing("audit").returncode == 0
