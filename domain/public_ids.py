"""Ledger entry ids as callers see them: neither guessable nor countable.

Entries are numbered internally in the order they were written (the balance chain and the pages need that
order). A caller sees each number through a keyed permutation of the 64-bit range (a four-round Feistel
network over BLAKE2b with the service's secret key): `txn_` and 13 base32 characters that tell nothing of
how many entries exist or which number comes next, and that the service alone can map back (page cursors
carry them).

A page names up to 200 entries, so naming one is kept cheap: each round copies a BLAKE2b state already keyed
(keying it afresh costs more than the hashing), and the base32 text is cut from a table of character pairs
(base64.b32encode is written in Python). tests/unit/test_public_ids.py pins the outputs.
"""
import base64
import hashlib
import struct
from collections.abc import Callable

ROUNDS = 4
_MASK32 = 2**32 - 1
MAX_ENTRY_ID = 2**63 - 1  # ledger entry ids are BIGINT
_HALF_AND_ROUND = struct.Struct(">IB").pack  # what a round hashes: the half, then the round's number
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # ten bits each


class PublicIds:
    def __init__(self, load_key: Callable[[], bytes]) -> None:
        self._load_key = load_key
        self._keyed: hashlib.blake2b | None = None  # nothing hashed yet: each round hashes a copy

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
        body = text[len(prefix):]
        try:
            value = int.from_bytes(base64.b32decode(body.upper() + "==="), "big")
        except ValueError:
            return None
        if _b32(value) != body:  # one text per entry: not upper case, nor a last character with its spare bit set
            return None
        entry_id = self._unpermute(value)
        return entry_id if 0 < entry_id <= MAX_ENTRY_ID else None

    def _round(self, half: int, i: int) -> int:
        keyed = self._keyed
        if keyed is None:
            keyed = self._keyed = hashlib.blake2b(key=self._load_key(), digest_size=4)
        h = keyed.copy()
        h.update(_HALF_AND_ROUND(half, i))
        return int.from_bytes(h.digest(), "big")

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
    """The 64 bits in 13 base32 characters, unpadded: six of ten bits, then the last four and a zero bit."""
    v = value << 1
    return (_PAIRS[v >> 55] + _PAIRS[(v >> 45) & 1023] + _PAIRS[(v >> 35) & 1023] + _PAIRS[(v >> 25) & 1023]
            + _PAIRS[(v >> 15) & 1023] + _PAIRS[(v >> 5) & 1023] + _ALPHABET[v & 31])
