"""Opaque, prefixed identifiers."""
import uuid

PREFIXES = ("usr", "ba", "ws", "op", "key", "chk", "grt", "hold", "atu")
_HEX = frozenset("0123456789abcdef")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def looks_like(prefix: str, value: str) -> bool:
    """True when value has the shape of an id we would have issued with this prefix."""
    head, _, tail = value.partition("_")
    return head == prefix and len(tail) == 32 and _HEX.issuperset(tail)


def default_account_id(user_id: str) -> str:
    """The id of a user's default billing account, made from the user's: one per user, held by the primary key
    (no unique index over owners, which a ledger distributed by account could not keep)."""
    return f"ba_{user_id.partition('_')[2]}"
