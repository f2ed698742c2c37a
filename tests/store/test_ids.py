"""Identifiers: ULIDs that sort by creation time and carry it."""

from __future__ import annotations

import time

from gateway.ids import new_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _decode(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    return value


def test_ids_are_prefixed_crockford_ulids_carrying_their_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id("msg")
    after = time.time_ns() // 1_000_000
    prefix, _, ulid = made.partition("_")
    assert prefix == "msg" and len(ulid) == 26 and set(ulid) <= CROCKFORD
    assert ulid[0] in "01234567"  # 128 bits: the first digit holds only 3 of them
    assert before <= _decode(ulid) >> 80 <= after


def test_ids_made_in_a_row_sort_in_creation_order_and_never_repeat() -> None:
    made = [new_id("evt") for _ in range(5000)]  # many share a millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)
