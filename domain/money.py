"""Money is integer cents; USDC atomic units are cents x 10,000."""

CURRENCY = "usd"
MAX_MOVEMENT_CENTS = 100_000_000
USDC_UNITS_PER_CENT = 10_000


def is_cents(value: object) -> bool:
    """True for a plain int (never a bool, float or string)."""
    return type(value) is int


def cents_to_usdc_units(cents: int) -> int:
    return cents * USDC_UNITS_PER_CENT
