"""``free_port`` hands out listening ports that no outgoing connection can take meanwhile."""

from __future__ import annotations

import socket

import pytest

from lingua_shared import devstack
from lingua_shared.devstack import PORT_FLOOR, ephemeral_range, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    lo, _ = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(PORT_FLOOR <= p < lo for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def listening_in_range() -> socket.socket:
    """A listener on a port of the range ``free_port`` hands out."""
    for port in range(ephemeral_range()[0] - 1, PORT_FLOOR, -1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        s.listen()
        return s
    raise RuntimeError("no port free in the range")


def test_a_port_with_a_listener_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = listening_in_range()
    port = busy.getsockname()[1]
    picks = iter([port, port, port - 1])  # the random picks: the busy port twice, then another

    class Picks:
        def randint(self, a: int, b: int) -> int:
            return next(picks)

    monkeypatch.setattr(devstack.random, "SystemRandom", Picks)
    try:
        assert free_port() == port - 1
    finally:
        busy.close()
