"""Usage batches: which events a balance covers, in order, each eventId debited at most once."""
from dataclasses import dataclass
from datetime import datetime

DEBITED, DUPLICATE, REFUSED = "debited", "duplicate", "refused"


@dataclass(frozen=True)
class Event:
    event_id: str
    metric: str
    quantity: int
    amount_cents: int  # positive: what the event costs
    occurred_at: datetime


@dataclass(frozen=True)
class Outcome:
    event: Event
    status: str
    balance_after_cents: int | None = None
    reason: str | None = None


def same_usage(a: Event, metric: str, quantity: int, amount_cents: int) -> bool:
    return (a.metric, a.quantity, a.amount_cents) == (metric, quantity, amount_cents)


def plan(balance_cents: int, events: list[Event], prior: dict[str, tuple[str, int, int]], *, held_cents: int = 0,
         room_cents: int | None = None) -> list[Outcome]:
    """Walk the batch in order: an eventId seen before (in the ledger or earlier in the batch) is a
    duplicate; an event what is available (the balance less what holds reserve) cannot cover in full is refused
    (never partly debited), and so is one past the spend limit's `room` (None: no limit); the rest are debited,
    each with the balance after it."""
    seen = dict(prior)  # eventId -> (metric, quantity, amountCents) of the occurrence that stands
    outcomes = []
    for event in events:
        if event.event_id in seen:
            differs = not same_usage(event, *seen[event.event_id])
            outcomes.append(Outcome(event, DUPLICATE, reason="eventId already recorded" + (
                " with another metric, quantity or amount; the first stands" if differs else "")))
        elif event.amount_cents > balance_cents - held_cents:
            outcomes.append(Outcome(event, REFUSED, reason=(
                f"insufficient_funds: available {balance_cents - held_cents} cents cannot cover "
                f"{event.amount_cents} cents")))
        elif room_cents is not None and event.amount_cents > room_cents:
            outcomes.append(Outcome(event, REFUSED, reason=(
                f"spend_limit: {room_cents} cents left of the workspace's monthly limit cannot cover "
                f"{event.amount_cents} cents")))
        else:
            balance_cents -= event.amount_cents
            room_cents = None if room_cents is None else room_cents - event.amount_cents
            seen[event.event_id] = (event.metric, event.quantity, event.amount_cents)
            outcomes.append(Outcome(event, DEBITED, balance_after_cents=balance_cents))
    return outcomes
