"""The registration queue: at most ``register_max_inflight`` registrations on the bus at once,
the rest held in arrival order and never refused; a failed publish is tried again."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from lingua_gateway.metrics import Metrics
from lingua_gateway.register_rpc import RegisterRpc
from lingua_shared.events import NodeRegisterEvent, RegisterReply
from lingua_shared.settings import Settings


class RecordingPublisher:
    """Records each ``node.register`` published; fails the first ``fail`` publishes."""

    def __init__(self, fail: int = 0) -> None:
        self.published: list[str] = []
        self.fail = fail

    async def event(self, routing_key: str, model: BaseModel, **kw: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise TimeoutError("confirm timed out")
        self.published.append(kw["correlation_id"])


def event(i: int) -> NodeRegisterEvent:
    return NodeRegisterEvent(
        node_id=f"n-{i}",
        conn_id=f"c-{i}",
        gateway_id="gw",
        sent_at_ms=0,
        ttl_ms=45_000,
        region="eu",
        gpu_tier="t4",
        lang_sets=[["en", "zh"]],
        capacity=4,
        services={},
    )


def reply(i: int) -> RegisterReply:
    return RegisterReply(node_id=f"n-{i}", conn_id=f"c-{i}", ok=True, created=True)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_registrations_beyond_the_bound_wait_for_a_slot_and_are_all_answered() -> None:
    pub = RecordingPublisher()
    metrics = Metrics()
    rpc = RegisterRpc(pub, Settings(register_max_inflight=2), metrics)
    calls = [asyncio.create_task(rpc(event(i), f"r{i}")) for i in range(5)]
    await settle()
    assert pub.published == ["r0", "r1"]  # two on the bus, three held
    assert metrics.registrations_queued._value.get() == 3
    rpc.resolve("r1", reply(1))
    await settle()
    assert pub.published == ["r0", "r1", "r2"]  # a slot freed: the next in line goes
    for i in (0, 2, 3, 4):
        await settle()
        rpc.resolve(f"r{i}", reply(i))
    answers = await asyncio.wait_for(asyncio.gather(*calls), 2)
    assert [a.node_id for a in answers] == [f"n-{i}" for i in range(5)]
    assert all(a.ok for a in answers)
    assert pub.published == [f"r{i}" for i in range(5)]
    assert metrics.registrations_queued._value.get() == 0


async def test_a_held_registration_whose_socket_closes_frees_nothing_it_did_not_take() -> None:
    pub = RecordingPublisher()
    rpc = RegisterRpc(pub, Settings(register_max_inflight=1), Metrics())
    first = asyncio.create_task(rpc(event(0), "r0"))
    held = asyncio.create_task(rpc(event(1), "r1"))
    await settle()
    held.cancel()  # the node went away while waiting for a slot
    await asyncio.gather(held, return_exceptions=True)
    third = asyncio.create_task(rpc(event(2), "r2"))
    await settle()
    assert pub.published == ["r0"]  # still one on the bus at a time
    rpc.resolve("r0", reply(0))
    await settle()
    assert pub.published == ["r0", "r2"]
    rpc.resolve("r2", reply(2))
    assert (await first).ok and (await third).ok


async def test_a_publish_that_times_out_is_tried_again_not_refused() -> None:
    pub = RecordingPublisher(fail=2)
    metrics = Metrics()
    rpc = RegisterRpc(pub, Settings(), metrics)
    call = asyncio.create_task(rpc(event(0), "r0"))
    # tried again after 0.5 s, then 1 s: published on the third try
    for _ in range(40):
        await asyncio.sleep(0.05)
        if pub.published:
            break
    assert pub.published == ["r0"]
    assert metrics.publish_failures.labels("node_register")._value.get() == 2
    assert not call.done()
    rpc.resolve("r0", reply(0))
    assert (await asyncio.wait_for(call, 1)).ok
