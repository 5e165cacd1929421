"""Queued credits applied in batches: one transaction for many, never a credit whose account is held, the
tier stored with the money; an Idempotency-Key settled in the credit's own transaction."""
import uuid

import pytest
from sqlalchemy import text

from domain.grants import Terms
from domain.models import OPERATOR_CALLER
from domain.names import Task
from domain.services import credit_batches, grants
from domain.services.credit_batches import BATCH_SIZE
from tests.api.checks import assert_problem, row_counts
from domain.store import ledger
from tests.processes import account_locked, age_operations, assert_sound, entries_per_operation, statuses


@pytest.fixture
def no_backlog(services, engine):
    """Apply whatever queued credits earlier tests left, so batches here hold this test's credits."""
    with engine.connect() as conn:
        left = list(conn.execute(text("SELECT id FROM operations WHERE kind = 'credit' AND status = 'queued'"))
                    .scalars())
    for operation_id in left:
        services.operations.apply(operation_id)


@pytest.fixture
def workspaces(api):
    owners = [api.new_user() for _ in range(3)]
    return owners, [api.new_workspace(owner) for owner in owners]


def credit(services, workspace: dict, cents: int) -> str:
    return services.operations.request_credit(OPERATOR_CALLER, workspace["id"], cents, "batch").id


def balance(api, owner, workspace: dict) -> int:
    return api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json["balanceCents"]


def attempts(engine, ids: list[str]) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, attempts FROM operations WHERE id = ANY(:ids)"), {"ids": ids}).all())


def test_one_message_applies_every_queued_credit_and_stores_their_tiers(api, services, engine, no_backlog,
                                                                        workspaces):
    owners, spaces = workspaces
    ids = [credit(services, spaces[i % 3], 100 + i) for i in range(9)]
    services.operations.apply(ids[4])  # one message: the batch takes the other eight along

    assert statuses(engine, ids) == {i: "succeeded" for i in ids}
    assert entries_per_operation(engine, ids) == {i: 1 for i in ids}
    assert attempts(engine, ids) == {i: 1 for i in ids}
    for i, (owner, workspace) in enumerate(zip(owners, spaces)):
        assert balance(api, owner, workspace) == 1000 + sum(100 + n for n in range(i, 9, 3))
    with engine.connect() as conn:
        tiers = dict(conn.execute(text(
            "SELECT t.billing_account_id, t.as_of_entry_id = (SELECT max(id) FROM ledger_entries e "
            "WHERE e.billing_account_id = t.billing_account_id) FROM account_tiers t "
            "WHERE t.billing_account_id = ANY(:a)"), {"a": [w["defaultBillingAccountId"] for w in spaces]}).all())
    assert tiers == {w["defaultBillingAccountId"]: True for w in spaces}  # computed with the credits

    for operation_id in ids:  # every credit's own message comes later, and changes nothing
        services.operations.apply(operation_id)
    assert entries_per_operation(engine, ids) == {i: 1 for i in ids}
    assert attempts(engine, ids) == {i: 1 for i in ids}
    assert_sound(services, *ids, *(w["defaultBillingAccountId"] for w in spaces))  # balance chains read right


def test_one_statement_posts_many_credits_per_account_in_order_and_never_a_key_twice(api, services, engine,
                                                                                     workspaces):
    _, spaces = workspaces
    a, b = spaces[0]["defaultBillingAccountId"], spaces[1]["defaultBillingAccountId"]
    key = uuid.uuid4().hex
    credits = [ledger.NewEntry(account, cents, f"{key}:{n}") for n, (account, cents) in
               enumerate([(a, 5), (b, 7), (a, 11), (a, 13), (b, 17)])]
    with engine.begin() as conn:
        posted = ledger.post_many(conn, credits, kind="credit_grant")
        grants.open_grants(conn, [(posted[c.key], Terms("operator")) for c in credits])  # as the batch does
    assert [(posted[c.key].billing_account_id, posted[c.key].balance_after_cents) for c in credits] == [
        (a, 1005), (b, 1007), (a, 1016), (a, 1029), (b, 1024)]
    ids = [posted[c.key].id for c in credits]
    assert ids == sorted(ids)  # entries take ids in batch order, so each chain reads in that order
    with engine.begin() as conn:
        assert ledger.post_many(conn, credits, kind="credit_grant") == {}  # posted before: nothing
        balances = dict(conn.execute(text("SELECT id, balance_cents FROM billing_accounts WHERE id = ANY(:ids)"),
                                     {"ids": [a, b]}).all())
    assert balances == {a: 1029, b: 1024}
    assert_sound(services, a, b)


def test_a_credit_whose_account_is_held_is_left_queued_with_a_message_of_its_own(api, services, queue, engine,
                                                                                no_backlog, workspaces):
    owners, spaces = workspaces
    hot = spaces[0]["defaultBillingAccountId"]
    with account_locked(engine, hot):
        held, free = credit(services, spaces[0], 300), credit(services, spaces[1], 400)
        queue.sent = []
        services.operations.apply(free)  # its batch claims the held one too, and leaves it alone
        assert statuses(engine, [held, free]) == {held: "queued", free: "succeeded"}
        assert attempts(engine, [held]) == {held: 0}
    assert queue.sent == [(Task.APPLY_OPERATION, {"operation_id": held})]  # messages are merged: it needs its own
    services.operations.apply(held)
    assert statuses(engine, [held]) == {held: "succeeded"}
    assert (balance(api, owners[0], spaces[0]), balance(api, owners[1], spaces[1])) == (1300, 1400)


def test_a_full_batch_goes_on_with_the_next_ones(api, services, engine, no_backlog, workspaces, monkeypatch):
    monkeypatch.setattr(credit_batches, "BATCH_SIZE", 3)
    owners, spaces = workspaces
    ids = [credit(services, spaces[i % 3], 10) for i in range(10)]
    services.operations.apply(ids[0])  # 3, then 3, 3 and the last one: four transactions, one message
    assert statuses(engine, ids) == {i: "succeeded" for i in ids}
    assert entries_per_operation(engine, ids) == {i: 1 for i in ids}


def test_a_message_for_a_finished_credit_applies_what_is_queued(api, services, engine, no_backlog, workspaces):
    _, spaces = workspaces
    first = credit(services, spaces[0], 10)
    services.operations.apply(first)
    later = [credit(services, spaces[1], 20), credit(services, spaces[2], 30)]
    services.operations.apply(first)  # a redelivery: nothing to do for it, the queued credits are applied
    assert statuses(engine, later) == {i: "succeeded" for i in later}
    assert entries_per_operation(engine, [first, *later]) == {i: 1 for i in [first, *later]}


def test_the_relay_sends_one_message_per_batch_of_queued_credits(api, services, queue, engine, workspaces):
    _, spaces = workspaces
    services.relay.send_due()  # whatever earlier tests left is sent now, and not due again for 30 s
    queue.up = False
    ids = [credit(services, spaces[i % 3], 10) for i in range(BATCH_SIZE + 1)]
    age_operations(engine, ids)
    queue.up, queue.sent = True, []
    assert services.relay.send_due() == len(ids)
    assert [name for name, _ in queue.sent] == [Task.APPLY_OPERATION, Task.APPLY_OPERATION]
    services.operations.apply(queue.sent[0][1]["operation_id"])
    services.operations.apply(queue.sent[1][1]["operation_id"])
    assert statuses(engine, ids) == {i: "succeeded" for i in ids}


def post_credit(api, workspace_id: str, body: dict, key: str):
    return api.operator("POST", f"/workspaces/{workspace_id}/billing/credits", json=body,
                        headers={"Idempotency-Key": key})


def test_a_refused_credit_is_the_first_answer_of_its_key(api, engine, queue):
    key, missing = f"k-{uuid.uuid4()}", "ws_" + "0" * 26
    first = post_credit(api, missing, {"amountCents": 100}, key)
    assert_problem(first, 404)
    again = post_credit(api, missing, {"amountCents": 100}, key)
    assert again.status_code == 404 and again.text == first.text and again.headers["idempotent-replayed"] == "true"
    assert_problem(post_credit(api, missing, {"amountCents": 101}, key), 409)
    invalid = post_credit(api, missing, {"amountCents": -1}, f"k-{uuid.uuid4()}")
    assert_problem(invalid, 422)
    assert queue.sent == []


def test_a_key_first_used_elsewhere_is_a_conflict_and_records_no_credit(api, engine, queue):
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    key = f"k-{uuid.uuid4()}"
    created = api.operator("POST", "/users", json={"email": f"{key}@example.com"}, headers={"Idempotency-Key": key})
    assert created.status_code == 201, created.text
    before = row_counts(engine)
    assert_problem(post_credit(api, workspace["id"], {"amountCents": 100}, key), 409)
    assert row_counts(engine) == before and Task.APPLY_OPERATION not in [name for name, _ in queue.sent]


def test_a_credit_and_its_answer_commit_together(api, engine, queue):
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    key = f"k-{uuid.uuid4()}"
    first = post_credit(api, workspace["id"], {"amountCents": 100}, key)
    assert first.status_code == 202, first.text
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT response_status, response_body, response_headers FROM idempotency_keys "
                                   "WHERE caller = 'operator' AND key = :k"), {"k": key}).one()
    assert (stored.response_status, stored.response_body) == (202, first.text)
    assert stored.response_headers == {"Location": f"/operations/{first.json['id']}",
                                       "Content-Type": "application/json"}
    again = post_credit(api, workspace["id"], {"amountCents": 100}, key)
    assert (again.status_code, again.text, again.headers["location"]) == (202, first.text, first.headers["location"])
    assert [kwargs for name, kwargs in queue.sent if name == Task.APPLY_OPERATION] == [{"operation_id": first.json["id"]}]


def test_a_batch_failing_on_one_credit_applies_the_others_alone(api, services, engine, no_backlog, workspaces,
                                                              monkeypatch):
    from sqlalchemy.exc import IntegrityError

    _, spaces = workspaces
    bad, good = credit(services, spaces[0], 10), credit(services, spaces[1], 20)
    post_many = credit_batches.ledger.post_many

    def failing(conn, credits, **kwargs):
        if f"op:{bad}" in [c.key for c in credits]:
            raise IntegrityError("INSERT ...", {}, Exception("a credit the ledger refuses"))
        return post_many(conn, credits, **kwargs)
    monkeypatch.setattr(credit_batches.ledger, "post_many", failing)
    services.operations.apply(good)  # its batch holds the bad one too: the batch fails, it goes alone
    assert statuses(engine, [bad, good]) == {bad: "queued", good: "succeeded"}
    with pytest.raises(IntegrityError):
        services.operations.apply(bad)  # its own task fails (and is retried, then dead-lettered)
    assert entries_per_operation(engine, [bad, good]) == {bad: 0, good: 1}


def test_an_account_held_by_a_batch_lets_a_tier_for_it_be_stored_meanwhile(api, services, engine, workspaces):
    """A batch holds its accounts while it stores their tiers; the API may store a first tier for one of them
    at the same time. Were the account locked FOR UPDATE, that insert's foreign-key check would wait on the
    batch, and the batch's tier upsert on the insert: a deadlock."""
    from domain.store import batch

    _, spaces = workspaces
    account = spaces[0]["defaultBillingAccountId"]
    with engine.connect() as holder, holder.begin():
        assert batch.lock_free_accounts(holder, [account]) == {account}
        with engine.connect() as other, other.begin():
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            other.execute(text("DELETE FROM account_tiers WHERE billing_account_id = :a"), {"a": account})
            other.execute(text("INSERT INTO account_tiers (billing_account_id, tier, reason, paid_cents, "
                               "balance_cents, as_of_entry_id, computed_at) "
                               "VALUES (:a, 'free', 'test', 0, 1000, 0, now())"), {"a": account})
            other.rollback()
