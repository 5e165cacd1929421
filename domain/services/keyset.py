"""Cursors of pages ordered by (created_at, id), newest first: the last row's instant and id."""
from datetime import datetime

from domain.errors import InvalidInput
from domain.models import Page


def cursor_of(created_at: datetime, row_id: str) -> str:
    return f"{created_at.isoformat()}|{row_id}"


def position(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) a cursor names; InvalidInput for one this service did not issue."""
    try:
        stamp, row_id = cursor.split("|", 1)
        return datetime.fromisoformat(stamp), row_id
    except ValueError:
        raise InvalidInput("the cursor is not one this service issued", field="cursor") from None


def page(found: list, limit: int) -> Page:
    """A page of the rows read with limit + 1 (the one past the page says another follows)."""
    items = found[:limit]
    more = len(found) > limit
    return Page(items=items, next_cursor=cursor_of(items[-1].created_at, items[-1].id) if more else None)
