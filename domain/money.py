"""Money is integer cents; USDC atomic units are cents x 10,000."""

CURRENCY = "usd"
MAX_MOVEMENT_CENTS = 100_000_000
USDC_UNITS_PER_CENT = 10_000


def cents_to_usdc_units(cents: int) -> int:
    return cents * USDC_UNITS_PER_CENT
