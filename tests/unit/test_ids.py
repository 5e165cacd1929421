"""Ids: opaque to callers, ordered by time for the indexes that hold them."""
import time

from sqlalchemy import text

from domain.ids import SQL_HEX, looks_like, new_id


def test_an_id_is_its_prefix_and_32_hex_digits_that_start_with_the_millisecond_clock():
    before = time.time_ns() // 1_000_000
    made = new_id("hold")
    after = time.time_ns() // 1_000_000
    assert looks_like("hold", made) and not looks_like("op", made)
    assert before <= int(made[len("hold_"):][:12], 16) <= after


def test_ids_made_in_a_later_millisecond_sort_after_and_none_repeats():
    first = new_id("op")
    time.sleep(0.002)
    later = [new_id("op") for _ in range(20_000)]
    assert all(first < made for made in later)
    assert len(set(later)) == len(later)
    assert all(looks_like("op", made) for made in later)


def test_ids_made_in_a_statement_have_the_same_shape_and_order(engine):
    with engine.connect() as conn:
        before = new_id("evt")
        time.sleep(0.002)
        made = conn.execute(text(f"SELECT 'evt_' || {SQL_HEX} FROM generate_series(1, 1000)")).scalars().all()
    assert all(looks_like("evt", one) and before < one for one in made)
    assert len(set(made)) == len(made)
