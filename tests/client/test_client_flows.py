"""What users do, through the Python client against the served API and a real worker."""
import uuid

import httpx
import pytest
from billing_client import BillingClient, Conflict, Forbidden, InvalidInput, NotFound
from billing_client.models import UsageEvent
from eth_account import Account

from tests.client.conftest import NETWORK
from tests.factories import OPERATOR_TOKEN
from tests.processes import assert_sound


def test_the_readme_flow_in_python(base_url, services):
    email = f"ada-{uuid.uuid4().hex[:10]}@example.com"
    with BillingClient(base_url, OPERATOR_TOKEN) as operator:
        created = operator.create_user(email, "Ada")
        with BillingClient(base_url, created.api_key) as ada:
            workspace = ada.create_workspace("Acme")
            operation = operator.add_credits(workspace.id, 2500, "welcome", idempotency_key=f"grant-{workspace.id}")
            assert operator.wait(operation, timeout=30).status == "succeeded"

            assert ada.me().email == email
            assert ada.balance(workspace.id).balance_cents == 3500
            transactions = list(ada.iter_transactions(workspace.id))
            summary = ada.summary(workspace.id)
    assert [(t.kind, t.amount_cents, t.balance_after_cents) for t in transactions] == [
        ("credit_grant", 2500, 3500), ("intro_credit", 1000, 1000)]
    assert (summary.total_credited_cents, summary.transaction_count) == (3500, 2)
    assert summary.by_kind["credit_grant"].amount_cents == 2500
    assert_sound(services, workspace.default_billing_account_id, operation.id)


def test_one_idempotency_key_sent_twice_makes_one_operation(operator, new_user):
    _, ada = new_user()
    workspace = ada.create_workspace("Acme")
    first = operator.add_credits(workspace.id, 700, idempotency_key="grant-once")
    again = operator.add_credits(workspace.id, 700, idempotency_key="grant-once")
    assert again.id == first.id
    operator.wait(first, timeout=30)
    assert ada.balance(workspace.id).balance_cents == 1000 + 700
    with pytest.raises(Conflict):  # the same key for another request
        operator.add_credits(workspace.id, 800, idempotency_key="grant-once")


def test_a_refused_body_raises_at_once_with_its_field_errors(operator, new_user, connect):
    sent = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request):
            sent.append(request.url.path)
            return super().handle_request(request)

    _, ada = new_user()
    workspace = ada.create_workspace("Acme")
    counted = connect(OPERATOR_TOKEN, transport=Counting())
    with pytest.raises(InvalidInput) as raised:
        counted.add_credits(workspace.id, 0)
    assert (raised.value.status, raised.value.title) == (422, "Unprocessable Content")
    assert [e.field for e in raised.value.errors] == ["amountCents"] and raised.value.detail
    assert raised.value.request_id and len(sent) == 1


def test_iterating_transactions_follows_the_cursor_across_pages(operator, new_user):
    _, ada = new_user()
    workspace = ada.create_workspace("Acme")
    events = [UsageEvent(event_id=f"req-{i}", metric="api.requests", quantity=10, amount_cents=1) for i in range(60)]
    operation = operator.record_usage(workspace.id, events)
    assert operator.wait(operation, timeout=30).status == "succeeded"

    transactions = list(ada.iter_transactions(workspace.id))  # the default page is 50
    assert len(transactions) == 61 and len({t.id for t in transactions}) == 61
    assert [t.kind for t in transactions] == ["usage"] * 60 + ["intro_credit"]
    assert [t.balance_after_cents for t in transactions] == list(range(940, 1000)) + [1000]
    assert len(list(ada.iter_transactions(workspace.id, limit=7, kind="usage"))) == 60


def test_members_read_and_owners_manage_linked_accounts(operator, new_user):
    owner_user, owner = new_user()
    member_user, member = new_user("Grace")
    workspace = owner.create_workspace("Acme")
    assert owner.add_member(workspace.id, member_user.id, "member").role == "member"
    project = owner.create_linked_account(workspace.id, "Project")
    assert owner.link_account(workspace.id, project.id).id == project.id  # already linked: the same account
    assert owner.set_default_account(workspace.id, project.id).default_billing_account_id == project.id
    assert {a.id: a.is_workspace_default for a in member.linked_accounts(workspace.id)}[project.id] is True
    assert member.balance(workspace.id).balance_cents == 0 and [w.id for w in member.workspaces()] == [workspace.id]
    with pytest.raises(Forbidden):
        member.set_default_account(workspace.id, workspace.default_billing_account_id)
    owner.set_default_account(workspace.id, workspace.default_billing_account_id)
    owner.unlink_account(workspace.id, project.id)
    assert owner.billing_account(project.id).linked_workspace_ids == []
    with pytest.raises(NotFound):
        member.billing_account(project.id)
    assert owner.me().id == owner_user.id


def test_account_reads_rate_limits_and_usage_overview_parse(operator, new_user):
    _, ada = new_user()
    workspace = ada.create_workspace("Acme")
    account_id = workspace.default_billing_account_id
    assert [a.id for a in ada.billing_accounts()] == [account_id]
    assert ada.account_balance(account_id).balance_cents == 1000
    assert ada.account_summary(account_id).transaction_count == 1
    assert [t.kind for t in ada.iter_account_transactions(account_id)] == ["intro_credit"]
    assert ada.account_transactions(account_id, limit=1).next_cursor is None
    operator.wait(operator.record_usage(workspace.id, [{"eventId": "job-1", "metric": "gpu.seconds",
                                                        "quantity": 360, "amountCents": 125}]), timeout=30)
    overview = ada.usage_overview(workspace.id, granularity="day")
    assert (overview.total_usage_cents, overview.by_metric[0].metric) == (125, "gpu.seconds")
    refreshed = ada.wait(ada.refresh_rate_limits(workspace.id), timeout=30)
    assert refreshed.status == "succeeded" and ada.rate_limits(workspace.id).tier == "free"
    decision = operator.check_rate_limit(workspace.id, cost=2)
    assert decision.allowed and decision.limit == 60


def test_a_payer_tops_up_over_x402_with_an_eth_account_key(operator, new_user, facilitator, services):
    _, ada = new_user()
    workspace = ada.create_workspace("Acme")
    account = Account.create()
    facilitator.fund(NETWORK, account.address, 10_000_000)

    accepted = ada.pay_x402(workspace.id, 750, account)
    assert ada.wait(accepted, timeout=30).status == "succeeded"
    checkout = ada.checkout(workspace.id, accepted.checkout_id)
    assert (checkout.provider, checkout.status, checkout.payer) == ("x402", "completed", account.address)
    assert ada.balance(workspace.id).balance_cents == 1000 + 750
    assert [c.id for c in ada.iter_checkouts(workspace.id)] == [checkout.id]
    assert facilitator.balance(NETWORK, account.address) == 10_000_000 - 7_500_000
    assert_sound(services, workspace.default_billing_account_id, accepted.id)
