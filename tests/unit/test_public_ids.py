"""Public transaction ids and cursors: the same outputs for ever (callers keep them), and mapped back exactly."""
import hashlib
import random

from domain.public_ids import PublicIds

KEY = bytes(range(32))

# Issued ids are kept by callers and page cursors are held between requests: these outputs are pinned. A
# faster implementation must give exactly these.
PINNED = {
    1: "txn_xytfextarzpnw",
    2: "txn_vmzifecbi67ym",
    3: "txn_jpo4yxmr6dk6g",
    1000: "txn_zfipgp4423mos",
    123_456_789: "txn_sarpprel2awwc",
    2**32 - 1: "txn_ejsh2xjuw2ul2",
    2**32: "txn_wugq3uaprncus",
    2**32 + 1: "txn_4ez6wy2co3eh6",
    9_876_543_210_123: "txn_ulk2g57ryqccs",
    2**63 - 1: "txn_zq5qq4hu4pnp2",
}
# SHA-256 of the ids of entries 1..20,000, one a line
FIRST_20000_SHA256 = "615306b18767af3f32a9a3a47b4a39ebbd1497642cee1aef1fcb3f71e254de27"


def test_transaction_ids_and_cursors_are_the_pinned_ones():
    ids = PublicIds(lambda: KEY)
    for entry_id, public in PINNED.items():
        assert ids.transaction(entry_id) == public
        assert ids.cursor(entry_id) == "c" + public.removeprefix("txn_")


def test_the_first_twenty_thousand_ids_are_the_pinned_ones():
    ids = PublicIds(lambda: KEY)
    lines = "\n".join(ids.transaction(n) for n in range(1, 20_001))
    assert hashlib.sha256(lines.encode()).hexdigest() == FIRST_20000_SHA256


def test_every_id_and_cursor_maps_back_to_its_entry():
    ids, rng = PublicIds(lambda: KEY), random.Random(14)
    for entry_id in [1, 2**32 - 1, 2**32, 2**63 - 1] + [rng.randrange(1, 2**63) for _ in range(2000)]:
        assert ids.entry_of(ids.transaction(entry_id)) == entry_id
        assert ids.entry_of_cursor(ids.cursor(entry_id)) == entry_id


def test_what_the_service_did_not_issue_names_no_entry():
    ids = PublicIds(lambda: KEY)
    cursor = ids.cursor(1000)
    for text in ("", "c", cursor[:-1], cursor + "a", "x" + cursor[1:], cursor.replace(cursor[5], "1"),
                 cursor.replace(cursor[5], "!"), ids.transaction(1000)):
        assert ids.entry_of_cursor(text) is None
    assert ids.entry_of(cursor) is None


def test_each_entry_has_one_text_only():
    """Base32 decoding would also take the text in upper case, or with the spare bit of its last character set."""
    ids = PublicIds(lambda: KEY)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for entry_id in (1, 1000, 2**63 - 1):
        cursor, public = ids.cursor(entry_id), ids.transaction(entry_id)
        spare_bit_set = cursor[:-1] + alphabet[alphabet.index(cursor[-1]) | 1]
        assert cursor != spare_bit_set and ids.entry_of_cursor(spare_bit_set) is None
        assert ids.entry_of_cursor("c" + cursor[1:].upper()) is None
        assert ids.entry_of("txn_" + public[4:].upper()) is None
        assert ids.entry_of_cursor(cursor) == ids.entry_of(public) == entry_id


def test_another_key_names_the_same_entries_otherwise():
    ours, theirs = PublicIds(lambda: KEY), PublicIds(lambda: b"another deployment's key")
    assert all(ours.transaction(n) != theirs.transaction(n) for n in range(1, 100))


def test_the_key_is_read_once_and_only_when_first_needed():
    reads = []
    ids = PublicIds(lambda: reads.append(1) or KEY)
    assert reads == []
    ids.transaction(1), ids.cursor(2), ids.entry_of_cursor(ids.cursor(3))
    assert reads == [1]
