"""Ledger entry ids as callers see them: neither guessable nor countable.

Entries are numbered internally in the order they were written (the balance chain and the pages need that
order). A caller sees each number through a keyed permutation of the 64-bit range (a four-round Feistel
network over BLAKE2b with the service's secret key): `txn_` and 13 base32 characters that tell nothing of
how many entries exist or which number comes next, and that the service alone can map back (page cursors
carry them).
"""
import base64
import hashlib
from collections.abc import Callable

ROUNDS = 4
_MASK32 = 2**32 - 1
MAX_ENTRY_ID = 2**63 - 1  # ledger entry ids are BIGINT


class PublicIds:
    def __init__(self, load_key: Callable[[], bytes]) -> None:
        self._load_key = load_key
        self._key: bytes | None = None

    def transaction(self, entry_id: int) -> str:
        return "txn_" + _b32(self._permute(entry_id))

    def cursor(self, entry_id: int) -> str:
        return "c" + _b32(self._permute(entry_id))

    def entry_of_cursor(self, cursor: str) -> int | None:
        """The entry id a cursor of ours names; None for anything else."""
        return self._entry(cursor, "c")

    def entry_of(self, transaction_id: str) -> int | None:
        """The entry id behind a transaction id (for operators and tests); None for anything else."""
        return self._entry(transaction_id, "txn_")

    def _entry(self, text: str, prefix: str) -> int | None:
        if len(text) != len(prefix) + 13 or not text.startswith(prefix):
            return None
        try:
            value = int.from_bytes(base64.b32decode(text[len(prefix):].upper() + "==="), "big")
        except ValueError:
            return None
        entry_id = self._unpermute(value)
        return entry_id if 0 < entry_id <= MAX_ENTRY_ID else None

    def _round(self, half: int, i: int) -> int:
        if self._key is None:
            self._key = self._load_key()
        digest = hashlib.blake2b(half.to_bytes(4, "big") + bytes([i]), key=self._key, digest_size=4).digest()
        return int.from_bytes(digest, "big")

    def _permute(self, value: int) -> int:
        left, right = value >> 32, value & _MASK32
        for i in range(ROUNDS):
            left, right = right, left ^ self._round(right, i)
        return (left << 32) | right

    def _unpermute(self, value: int) -> int:
        left, right = value >> 32, value & _MASK32
        for i in reversed(range(ROUNDS)):
            left, right = right ^ self._round(left, i), left
        return (left << 32) | right


def _b32(value: int) -> str:
    return base64.b32encode(value.to_bytes(8, "big")).decode().rstrip("=").lower()
