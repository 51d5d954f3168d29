"""ReregisterGate: one re-register request per connection per window, memory bounded by it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lingua_node_manager.reregister import ReregisterGate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_is_asked_once_per_window_then_again():
    clock = Clock()
    gate = ReregisterGate(3.0, clock)
    assert gate.should_ask("n1", "c1")
    for _ in range(5):  # the beats that keep coming while the registration is on its way
        clock.now += 0.5
        assert not gate.should_ask("n1", "c1")
    clock.now = 103.01  # the window has passed: the request may have been lost, ask again
    assert gate.should_ask("n1", "c1")
    assert not gate.should_ask("n1", "c1")


def test_other_nodes_and_a_new_connection_are_not_held_back():
    gate = ReregisterGate(3.0, Clock())
    assert gate.should_ask("n1", "c1")
    assert gate.should_ask("n2", "c1")
    assert gate.should_ask("n1", "c2")  # the node reconnected: a new connection, a new request
    assert not gate.should_ask("n1", "c1")


def test_a_registration_clears_the_connection():
    gate = ReregisterGate(3.0, Clock())
    assert gate.should_ask("n1", "c1")
    gate.forget("n1", "c1")
    gate.forget("n1", "never-asked")  # nothing to forget is fine
    assert gate.should_ask("n1", "c1")  # expired again right after registering: ask at once


def test_old_entries_are_dropped_so_memory_is_one_window():
    clock = Clock()
    gate = ReregisterGate(1.0, clock)
    for i in range(1000):
        gate.should_ask(f"n{i}", "c")
    assert len(gate) == 1000
    clock.now += 1.5
    gate.should_ask("late", "c")
    assert len(gate) == 1


def test_the_window_must_be_positive():
    with pytest.raises(ValueError):
        ReregisterGate(0)


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 2)), max_size=60))
def test_never_two_requests_for_one_connection_within_the_window(beats):
    """Whatever the arrival pattern, two requests for a connection are >= window apart."""
    clock = Clock()
    gate = ReregisterGate(1.0, clock)
    last: dict[int, float] = {}
    for node, dt in beats:
        clock.now += dt
        if gate.should_ask(f"n{node}", "c"):
            assert node not in last or clock.now - last[node] >= 1.0
            last[node] = clock.now
        else:
            assert node in last and clock.now - last[node] < 1.0 + 1e-9
