"""Cursors of pages ordered by (created_at, id): opaque, and refused when the service did not issue them."""
from datetime import UTC, datetime

import pytest

from domain.errors import InvalidInput
from domain.services import keyset


def test_a_keyset_cursor_is_opaque_and_names_its_row_again():
    at = datetime(2026, 12, 4, 20, 6, 22, 501835, tzinfo=UTC)
    cursor = keyset.cursor_of(at, "dlv_5fed")
    assert "|" not in cursor and "2026" not in cursor and "=" not in cursor
    assert keyset.position(cursor) == (at, "dlv_5fed")


def test_a_cursor_the_service_did_not_issue_is_refused_naming_the_field():
    for forged in ("2026-12-04T20:06:22+00:00|dlv_x", "!!!", "", "MjAyNi0xMi0wNA", keyset.cursor_of(datetime(2026, 1, 1), "x")):
        with pytest.raises(InvalidInput) as refused:
            keyset.position(forged)
        assert refused.value.field == "cursor"
