"""GcPolicy: frozen objects are out of the collector's sight until the periodic full pass."""

from __future__ import annotations

import asyncio
import gc
import weakref

from prometheus_client import CollectorRegistry, Histogram

from lingua_gateway.gcpolicy import GcPolicy


class Peer:
    peer: Peer | None = None


def pauses() -> Histogram:
    return Histogram("t_gc_pause_seconds", "test", registry=CollectorRegistry())


def observed(h: Histogram) -> float:
    return next(s.value for m in h.collect() for s in m.samples if s.name.endswith("_count"))


def test_a_cycle_frozen_while_alive_waits_for_the_full_pass():
    policy = GcPolicy(10.0, 600.0, pauses())
    a, b = Peer(), Peer()
    a.peer, b.peer = b, a  # a reference cycle, like a connection and its protocol
    ref = weakref.ref(a)
    try:
        gc.freeze()
        del a, b
        gc.collect()
        assert ref() is not None  # frozen: an ordinary collection does not walk it
        assert policy.full_pass() >= 2
        assert ref() is None
        assert gc.get_freeze_count() > 0  # the survivors are frozen again
    finally:
        gc.unfreeze()


async def test_start_freezes_and_times_full_passes_and_stop_undoes_it():
    h = pauses()
    policy = GcPolicy(0.01, 600.0, h)
    policy.start()
    try:
        assert gc.get_freeze_count() > 0
        await asyncio.sleep(0.05)  # a few periodic freezes
        gc.collect()
        assert observed(h) >= 1
    finally:
        await policy.stop()
    assert gc.get_freeze_count() == 0
    before = observed(h)
    gc.collect()
    assert observed(h) == before  # the callback is gone


async def test_the_periodic_loop_runs_the_full_pass_when_due():
    policy = GcPolicy(0.01, 0.02, pauses())
    passes: list[int] = []
    full_pass = policy.full_pass
    policy.full_pass = lambda: passes.append(full_pass()) or 0  # type: ignore[method-assign]
    policy.start()
    try:
        for _ in range(200):
            if passes:
                break
            await asyncio.sleep(0.01)
    finally:
        await policy.stop()
    assert passes
