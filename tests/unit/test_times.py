"""The contract's time format."""
from datetime import UTC, datetime, timedelta, timezone

from domain.times import LATEST, rfc3339


def test_an_instant_is_written_in_utc_with_milliseconds_and_z():
    assert rfc3339(datetime(2026, 1, 1, 1, 2, 3, 4567, tzinfo=timezone(timedelta(hours=-2)))) == "2026-01-01T03:02:03.004Z"
    assert rfc3339(datetime(2026, 11, 27, 12, tzinfo=UTC)) == "2026-11-27T12:00:00.000Z"
    assert rfc3339(None) is None


def test_the_year_always_has_four_digits_at_both_ends_of_the_range():
    assert rfc3339(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"
    assert rfc3339(LATEST) == "9999-12-31T23:59:59.999Z"

