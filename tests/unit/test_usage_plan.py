"""Planning a usage batch: in order, each eventId once, each event in full or refused."""
from datetime import UTC, datetime

from domain.usage import DEBITED, DUPLICATE, REFUSED, Event, plan

T = datetime(2026, 1, 1, tzinfo=UTC)


def ev(event_id: str, cents: int, metric: str = "tokens", quantity: int = 1) -> Event:
    return Event(event_id, metric, quantity, cents, T)


def test_events_are_debited_in_order_with_the_balance_after_each():
    outcomes = plan(100, [ev("a", 30), ev("b", 70)], {})
    assert [(o.status, o.balance_after_cents) for o in outcomes] == [(DEBITED, 70), (DEBITED, 0)]


def test_an_event_the_balance_cannot_cover_is_refused_and_later_ones_that_fit_still_debit():
    outcomes = plan(50, [ev("a", 40), ev("b", 20), ev("c", 10)], {})
    assert [o.status for o in outcomes] == [DEBITED, REFUSED, DEBITED]
    assert outcomes[1].reason.startswith("insufficient_funds") and outcomes[2].balance_after_cents == 0


def test_an_event_id_seen_in_the_ledger_or_earlier_in_the_batch_is_a_duplicate():
    outcomes = plan(100, [ev("old", 5), ev("new", 5), ev("new", 5), ev("new", 6)], {"old": ("tokens", 1, 5)})
    assert [o.status for o in outcomes] == [DUPLICATE, DEBITED, DUPLICATE, DUPLICATE]
    assert "first stands" not in outcomes[2].reason and "first stands" in outcomes[3].reason
    assert outcomes[1].balance_after_cents == 95
