"""ReorderBuffer: a session's answers strictly by index, one per index, never blocked forever."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lingua_gateway.reorder import DUPLICATE, LATE, ReorderBuffer


def indices(ready: list[tuple[int, str]]) -> list[int]:
    return [i for i, _ in ready]


def test_in_order_answers_go_out_at_once():
    buf: ReorderBuffer[str] = ReorderBuffer(10.0)
    for i in range(5):
        pushed = buf.push(i, f"r{i}", now=0.0)
        assert pushed.ready == [(i, f"r{i}")] and pushed.dropped is None
    assert buf.next_index == 5 and buf.waiting == 0 and buf.deadline() is None


def test_out_of_order_answers_wait_for_the_earlier_ones():
    buf: ReorderBuffer[str] = ReorderBuffer(10.0)
    assert buf.push(2, "r2", now=0.0).ready == []
    assert buf.push(1, "r1", now=0.1).ready == []
    assert buf.waiting == 2 and buf.deadline() == 10.0
    assert indices(buf.push(0, "r0", now=0.2).ready) == [0, 1, 2]
    assert buf.waiting == 0 and buf.next_index == 3


def test_duplicates_are_dropped_whether_sent_or_waiting():
    buf: ReorderBuffer[str] = ReorderBuffer(10.0)
    buf.push(0, "r0", now=0.0)
    assert buf.push(0, "again", now=0.1).dropped == DUPLICATE
    buf.push(2, "r2", now=0.2)
    pushed = buf.push(2, "again", now=0.3)
    assert pushed.dropped == DUPLICATE and pushed.ready == []
    assert indices(buf.push(1, "r1", now=0.4).ready) == [1, 2]


def test_a_missing_index_is_skipped_after_the_timeout():
    buf: ReorderBuffer[str] = ReorderBuffer(10.0)
    buf.push(0, "r0", now=0.0)
    buf.push(2, "r2", now=1.0)
    buf.push(3, "r3", now=2.0)
    assert buf.expire(now=10.9).ready == []  # not yet: 2 has waited 9.9 s
    released = buf.expire(now=11.0)
    assert indices(released.ready) == [2, 3] and released.skipped == 1
    assert buf.next_index == 4 and buf.deadline() is None
    # the skipped index arriving after all is dropped (late), and so is a re-sent one
    assert buf.push(1, "r1", now=12.0).dropped == LATE
    assert buf.push(3, "r3", now=12.0).dropped == DUPLICATE
    assert indices(buf.push(4, "r4", now=12.0).ready) == [4]


def test_release_goes_through_the_newest_expired_and_keeps_younger_waiters_in_order():
    buf: ReorderBuffer[str] = ReorderBuffer(5.0)
    buf.push(3, "r3", now=0.0)  # old
    buf.push(1, "r1", now=4.0)  # younger, lower index
    buf.push(6, "r6", now=4.0)  # younger, higher index
    released = buf.expire(now=5.0)
    # 3 expired: everything up to 3 goes (1 included, in order); 6 keeps waiting for 4, 5
    assert indices(released.ready) == [1, 3] and released.skipped == 2
    assert buf.next_index == 4 and buf.deadline() == 9.0
    assert indices(buf.push(4, "r4", now=6.0).ready) == [4]
    assert indices(buf.expire(now=9.0).ready) == [6]


def test_the_waiting_bound_forces_a_release():
    buf: ReorderBuffer[str] = ReorderBuffer(60.0, max_waiting=3)
    for i in (1, 2, 3):
        assert buf.push(i, f"r{i}", now=0.0).ready == []
    pushed = buf.push(4, "r4", now=0.0)
    assert indices(pushed.ready) == [1, 2, 3, 4] and pushed.skipped == 1


@given(st.permutations(list(range(12))), st.lists(st.integers(0, 11), max_size=6))
def test_any_arrival_order_gives_each_index_once_in_order(order, dupes):
    buf: ReorderBuffer[int] = ReorderBuffer(10.0)
    sent: list[int] = []
    for t, i in enumerate([*order, *dupes]):
        sent += indices(buf.push(i, i, now=float(t)).ready)  # type: ignore[arg-type]
    assert sent == list(range(12))
