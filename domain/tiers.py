"""Rate-limit tier policy: a pure function of (balance, paid, table) -> tier, reason, requests per minute."""
from dataclasses import dataclass

RESTRICTED = "restricted"


@dataclass(frozen=True)
class Tier:
    name: str
    min_paid_cents: int
    requests_per_minute: int


@dataclass(frozen=True)
class TierTable:
    """`restricted` applies whenever the balance is not positive; otherwise the highest paid tier reached."""

    restricted_rpm: int
    paid: tuple[Tier, ...]  # ascending min_paid_cents, the first at 0

    def requests_per_minute(self, tier: str) -> int:
        if tier == RESTRICTED:
            return self.restricted_rpm
        return next((t.requests_per_minute for t in self.paid if t.name == tier), self.restricted_rpm)


@dataclass(frozen=True)
class Decision:
    tier: str
    reason: str  # the rule that decided, e.g. "paid >= 500"
    requests_per_minute: int


DEFAULT_TABLE = TierTable(restricted_rpm=10, paid=(
    Tier("free", 0, 60), Tier("tier1", 500, 600), Tier("tier2", 5_000, 3_000), Tier("tier3", 50_000, 10_000)))


def decide(balance_cents: int, paid_cents: int, table: TierTable = DEFAULT_TABLE) -> Decision:
    if balance_cents <= 0:
        return Decision(RESTRICTED, "balance <= 0", table.restricted_rpm)
    reached = [t for t in table.paid if paid_cents >= t.min_paid_cents] or [table.paid[0]]
    tier = reached[-1]
    above = table.paid[len(reached)] if len(reached) < len(table.paid) else None
    if tier.min_paid_cents > 0:
        reason = f"paid >= {tier.min_paid_cents}"
    else:
        reason = f"paid < {above.min_paid_cents}" if above else "paid >= 0"
    return Decision(tier.name, reason, tier.requests_per_minute)


def parse_table(data: object) -> TierTable:
    """A table from JSON: {"restricted": 10, "free": [0, 60], "tier1": [500, 600], ...}; ValueError if bad."""
    if not isinstance(data, dict) or not isinstance(data.get(RESTRICTED), int) or data[RESTRICTED] < 1:
        raise ValueError('expected {"restricted": <rpm>, "<tier>": [<min paid cents>, <rpm>], ...}')
    paid = []
    for name, value in data.items():
        if name == RESTRICTED:
            continue
        if (not isinstance(value, list) or len(value) != 2 or not all(type(v) is int for v in value)
                or value[0] < 0 or value[1] < 1):
            raise ValueError(f"tier {name!r}: expected [<min paid cents >= 0>, <requests per minute >= 1>]")
        paid.append(Tier(name, value[0], value[1]))
    paid.sort(key=lambda t: t.min_paid_cents)
    if not paid or paid[0].min_paid_cents != 0 or len({t.min_paid_cents for t in paid}) != len(paid):
        raise ValueError("the paid tiers need distinct thresholds, the lowest at 0")
    return TierTable(restricted_rpm=data[RESTRICTED], paid=tuple(paid))
