"""Postings racing on one account, each in its own transaction: nothing lost, nothing doubled, never negative."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from domain.errors import InsufficientFunds
from tests.api.checks import all_transactions, ledger_problems
from tests.factories import new_linked_account, post


@pytest.fixture
def fresh_account(api):
    """An owner and a new account of theirs with balance 0 and no entries."""
    owner = api.new_user()
    ws = api.new_workspace(owner)
    return owner, new_linked_account(api, owner, ws["id"])["id"]


def race(count: int, work, workers: int = 25) -> list:
    """Run work(i) for i in range(count) on threads released together; each outcome or raised error."""
    start = threading.Barrier(min(count, workers))

    def attempt(i):
        if i < workers:
            start.wait(timeout=10)
        try:
            return work(i)
        except Exception as exc:  # the outcome under test may be an error
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(attempt, range(count)))


def test_fifty_concurrent_postings_lose_no_update_and_keep_the_balance_chain(api, services, fresh_account):
    owner, account_id = fresh_account
    post(services, account_id, 5_000, key=f"seed:{account_id}")
    amounts = [300 + i if i % 3 else -(40 + i) for i in range(50)]
    outcomes = race(50, lambda i: post(services, account_id, amounts[i], key=f"race:{account_id}:{i}"), workers=50)
    assert [type(o).__name__ for o in outcomes] == ["Posting"] * 50
    entries = all_transactions(api, owner.key, account_id)
    assert len(entries) == 51
    assert sorted(t["amountCents"] for t in entries) == sorted(amounts + [5_000])
    balance = api.call("GET", f"/billing-accounts/{account_id}/balance", owner.key).json["balanceCents"]
    assert balance == sum(t["amountCents"] for t in entries) == 5_000 + sum(amounts)
    running = 0
    for entry in reversed(entries):
        running += entry["amountCents"]
        assert entry["balanceAfterCents"] == running
    assert ledger_problems(services, account_id) == []


def test_one_key_posted_by_many_threads_at_once_makes_exactly_one_entry(api, services, fresh_account):
    owner, account_id = fresh_account
    outcomes = race(20, lambda i: post(services, account_id, 250, key=f"same:{account_id}"))
    assert len({o.entry.id for o in outcomes}) == 1
    assert sorted(o.created for o in outcomes) == [False] * 19 + [True]
    assert [t["amountCents"] for t in all_transactions(api, owner.key, account_id)] == [250]
    assert api.call("GET", f"/billing-accounts/{account_id}/balance", owner.key).json["balanceCents"] == 250
    assert ledger_problems(services, account_id) == []


def test_concurrent_debits_never_take_the_balance_below_zero(api, services, fresh_account):
    owner, account_id = fresh_account
    post(services, account_id, 1000)
    outcomes = race(130, lambda i: post(services, account_id, -10, key=f"debit:{account_id}:{i}"))
    refused = [o for o in outcomes if isinstance(o, InsufficientFunds)]
    posted = [o for o in outcomes if not isinstance(o, Exception)]
    assert (len(posted), len(refused)) == (100, 30)
    assert api.call("GET", f"/billing-accounts/{account_id}/balance", owner.key).json["balanceCents"] == 0
    assert min(t["balanceAfterCents"] for t in all_transactions(api, owner.key, account_id)) == 0
    assert ledger_problems(services, account_id) == []


def test_a_debit_may_go_below_zero_only_when_the_caller_allows_it(services, fresh_account):
    _, account_id = fresh_account
    with pytest.raises(InsufficientFunds):
        post(services, account_id, -1)
    assert post(services, account_id, -1, allow_negative=True).entry.balance_after_cents == -1
