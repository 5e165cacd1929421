"""Usage and tiers through the served API and a real Celery worker: debited once, tiers follow the money."""
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from domain.ids import new_id
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store import checkouts, stripe_events
from domain.store.uow import UnitOfWork
from tests.processes import assert_sound, wait_for_operations, wait_until


def _events(ids, cents: int = 10) -> dict:
    return {"events": [{"eventId": i, "metric": "tokens", "quantity": 100, "amountCents": cents} for i in ids]}


def _tier(api, key: str, workspace_id: str) -> str:
    return api.call("GET", f"/workspaces/{workspace_id}/rate-limits", key).json["tier"]


def test_usage_resent_and_sent_concurrently_debits_each_event_once_then_restricts(stack, services, engine):
    api = stack.api
    owner = api.new_user()
    ws = api.new_workspace(owner)
    batches = [_events([f"e{i}" for i in range(start, start + 40)]) for start in (0, 0, 20, 40, 0, 60)]

    with ThreadPoolExecutor(len(batches)) as pool:
        answers = list(pool.map(lambda body: api.operator("POST", f"/workspaces/{ws['id']}/billing/usage",
                                                          json=body), batches))
    assert [a.status_code for a in answers] == [202] * len(batches), [a.text for a in answers]
    ids = [a.json["id"] for a in answers]
    assert set(wait_for_operations(engine, ids).values()) == {"succeeded"}

    with engine.connect() as conn:
        per_event = dict(conn.execute(text("SELECT reference, count(*) FROM ledger_entries WHERE kind = 'usage' "
                                           "AND workspace_id = :ws GROUP BY reference"), {"ws": ws["id"]}).all())
    assert per_event == {f"e{i}": 1 for i in range(100)}
    results = [api.operator("GET", f"/operations/{i}").json["result"] for i in ids]
    assert sum(r["debited"] for r in results) == 100 and sum(r["duplicates"] for r in results) == 140
    assert api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"] == 0
    # the worker recomputes the tier after the debits: the balance is 0, so the workspace is restricted
    assert wait_until(lambda: _tier(api, owner.key, ws["id"]) == "restricted", 20, "the tier to be restricted")
    assert_sound(services, ws["defaultBillingAccountId"], *ids)


def test_a_stripe_top_up_moves_a_free_workspace_to_tier1_once_the_worker_recomputes(stack, engine):
    api = stack.api
    owner = api.new_user()
    ws = api.new_workspace(owner)
    assert _tier(api, owner.key, ws["id"]) == "free"
    # The webhook's task, in process; what it enqueues after its commit goes to the stack's broker.
    payments = Services(Context(uow=lambda: UnitOfWork(engine), config=Config(),
                                enqueue=lambda name, **kwargs: bool(stack.send_task(name, **kwargs))))
    checkout_id, event_id = new_id("chk"), f"evt_{uuid.uuid4().hex}"
    session = {"id": f"cs_{uuid.uuid4().hex}", "client_reference_id": checkout_id, "status": "complete",
               "payment_status": "paid", "amount_total": 500, "currency": "usd", "payment_intent": "pi_1"}
    with payments.ctx.uow() as uow:
        checkouts.insert_checkout(uow.conn, checkout_id=checkout_id, provider="stripe", workspace_id=ws["id"],
                                  billing_account_id=ws["defaultBillingAccountId"], amount_cents=500,
                                  created_by=owner.id)
        stripe_events.store(uow.driver, event_id, "checkout.session.completed", {"object": session})
        uow.commit()

    assert payments.stripe.apply_event(event_id) == "credited"
    assert wait_until(lambda: _tier(api, owner.key, ws["id"]) == "tier1", 20, "the worker to recompute the tier")
    status = api.call("GET", f"/workspaces/{ws['id']}/rate-limits", owner.key).json
    assert (status["reason"], status["limits"]["requestsPerMinute"]) == ("paid >= 500", 600)
    checked = api.operator("POST", f"/workspaces/{ws['id']}/rate-limits/check", json={}).json
    assert (checked["allowed"], checked["limit"], checked["remaining"], checked["tier"]) == (True, 600, 599, "tier1")
