"""Cursors of pages ordered by (created_at, id), newest first: the last row's instant and id, opaque to callers
(base64url: a client is not invited to parse or build one)."""
import base64
import binascii
from datetime import datetime

from domain.errors import InvalidInput
from domain.models import Page


def cursor_of(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def position(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) a cursor names; InvalidInput for one this service did not issue."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = text.split("|", 1)
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("no offset")
        return at, row_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("the cursor is not one this service issued", field="cursor") from None


def page(found: list, limit: int) -> Page:
    """A page of the rows read with limit + 1 (the one past the page says another follows)."""
    items = found[:limit]
    more = len(found) > limit
    return Page(items=items, next_cursor=cursor_of(items[-1].created_at, items[-1].id) if more else None)
