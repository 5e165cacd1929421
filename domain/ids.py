"""Opaque, prefixed identifiers."""
import secrets
import time

_HEX = frozenset("0123456789abcdef")


def new_id(prefix: str) -> str:
    """The prefix, then 32 hex digits: the time in milliseconds (12), then 80 random bits (20).

    Time first, so that the rows a table gains together sit together in its indexes on the id (on (workspace_id,
    id) and (billing_account_id, id) too): an insert touches the pages the last ones did, where a random id lands
    on any page of the index, and after a checkpoint the first change of each page writes all of it to the WAL
    (bench/id_order: 8.3 kB of WAL per hold creation with random ids, 1.9 kB with these)."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


# new_id's 32 hex digits made in a statement: the clock's milliseconds, then 80 bits of a hash of a random uuid
SQL_HEX = ("lpad(to_hex(CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS bigint)), 12, '0') "
           "|| left(md5(CAST(gen_random_uuid() AS text)), 20)")


def looks_like(prefix: str, value: str) -> bool:
    """True when value has the shape of an id we would have issued with this prefix."""
    head, _, tail = value.partition("_")
    return head == prefix and len(tail) == 32 and _HEX.issuperset(tail)


def default_account_id(user_id: str) -> str:
    """The id of a user's default billing account, made from the user's: one per user, held by the primary key
    (no unique index over owners, which a ledger distributed by account could not keep)."""
    return f"ba_{user_id.partition('_')[2]}"
