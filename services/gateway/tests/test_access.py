"""The pure parts of ``lingua_gateway.access``: the byte-rate bucket and identity counting."""

from __future__ import annotations

import pytest

from lingua_gateway.access import Access, ByteRate
from lingua_shared.auth import Principal
from lingua_shared.settings import Settings


def test_byte_rate_allows_a_burst_then_paces_at_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"t": 100.0}
    monkeypatch.setattr("lingua_gateway.access.time.monotonic", lambda: clock["t"])
    rate = ByteRate(1_000, burst_s=2.0)  # 2,000 bytes of burst
    assert rate.delay_for(1_500) == 0.0
    assert rate.delay_for(500) == 0.0  # the burst is spent exactly
    assert rate.delay_for(250) == pytest.approx(0.25)  # 250 bytes over at 1,000 B/s
    clock["t"] += 0.25  # the reader paused as told: the debt is paid, nothing left over
    assert rate.delay_for(100) == pytest.approx(0.1)
    clock["t"] += 10.0  # a long quiet spell refills the bucket only up to the burst
    assert rate.delay_for(2_000) == 0.0
    assert rate.delay_for(1) > 0.0


def test_connections_per_identity_are_counted_per_kind_and_subject() -> None:
    access = Access(Settings(ws_max_connections_per_identity=2))
    node, client = Principal("node", "n1", 0), Principal("client", "n1", 0)
    assert access.claim(node) and access.claim(node)
    assert not access.claim(node)
    assert access.claim(client)  # same subject, other kind: another identity
    access.release(node)
    assert access.claim(node)
    for _ in range(2):
        access.release(node)
    access.release(client)
    assert not access.held
