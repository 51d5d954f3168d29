"""A slow broker delays the fleet, never refuses or forgets it: a registration whose publish
is not confirmed in time is published again and acked later, and a heartbeat batch whose
confirm times out goes out again in the next window.

The slowness is real: the gateway's AMQP connection goes through the fault proxy
(``tests/faults/proxy.py``) in ``latency`` mode, each chunk held longer than the confirm
timeout, against the real RabbitMQ and the real node-manager.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from websockets.asyncio.client import connect

from lingua_gateway.coalescer import HeartbeatCoalescer
from lingua_gateway.metrics import Metrics
from lingua_shared.bus import Publisher, Topology, declare_queue, declare_topology, delete_bus
from lingua_shared.bus.topology import QueueSpec
from lingua_shared.events import Beat, HeartbeatBatch
from tests.faults.proxy import FaultProxy
from tests.support.helpers import eventually, metric, node_state, register_frame
from tests.support.stack import started_stack

pytestmark = pytest.mark.integration

CONFIRM_TIMEOUT_S = 0.3
SLOW_MS = 1200  # every chunk through the proxy is held this long: 4 confirm timeouts


@pytest.fixture
def amqp_proxy(amqp_url: str) -> Iterator[FaultProxy]:
    port = int(amqp_url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port) as p:
        yield p


def proxied(amqp_url: str, proxy: FaultProxy) -> str:
    host_port = amqp_url.split("@", 1)[1].split("/", 1)[0]
    return amqp_url.replace(host_port, f"127.0.0.1:{proxy.port}")


async def test_a_registration_whose_publish_times_out_is_delayed_then_acked(
    redis, stack_env: dict[str, str], amqp_proxy: FaultProxy, amqp_url: str, tmp_path: Path, request
) -> None:
    gw_env = {
        "LINGUA_AMQP_URL": proxied(amqp_url, amqp_proxy),
        "LINGUA_AMQP_CONFIRM_TIMEOUT_S": str(CONFIRM_TIMEOUT_S),
        "LINGUA_REGISTER_TIMEOUT_S": "0.5",
    }
    with started_stack(stack_env, tmp_path, request, [("nm-1", "node-manager")]) as stack:
        stack.start("gw-a", "gateway", **gw_env).wait_ready()
        amqp_proxy.set("latency", ms=SLOW_MS)
        async with connect(stack.gateway_url()) as ws:
            # lingua's 15 s beats: the record outlives the slow reply (a 200 ms node's would not)
            await ws.send(register_frame("node-slow-broker", heartbeat_interval_ms=15_000))
            # the broker is slow: no answer yet, and above all no refusal
            with pytest.raises(TimeoutError):
                early = await asyncio.wait_for(ws.recv(), 2.5)
                pytest.fail(f"answered while the broker was slow: {early}")
            failed = metric(stack, "gw-a", "lingua_gateway_publish_failures_total",
                            kind="node_register")  # fmt: skip
            assert failed >= 1, "the publish did not time out: the test proves nothing"
            amqp_proxy.set("pass")
            ack = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert ack["type"] == "node_register_ack", ack
            assert ack["node_id"] == "node-slow-broker" and ack["status"] == "ready", ack
            state = await node_state(redis, stack.keys, "node-slow-broker")
            assert state.get("gateway_id") == "gw-a", state


async def test_a_heartbeat_batch_whose_confirm_times_out_is_not_lost(
    amqp_url: str, amqp_proxy: FaultProxy, bus_prefix: str
) -> None:
    topo = Topology(f"{bus_prefix}-slow-{uuid.uuid4().hex[:6]}")
    direct = await aio_pika.connect(amqp_url, timeout=10)
    slow = await aio_pika.connect_robust(proxied(amqp_url, amqp_proxy), timeout=10)
    try:
        channel = await direct.channel()
        await declare_topology(channel, topo)
        queue = await declare_queue(
            channel,
            QueueSpec(
                f"{topo.prefix}.beats",
                ((topo.events, "node.heartbeat.batch"),),
                quorum=False,
                exclusive=True,
            ),
        )
        publisher = await Publisher.open(slow, topo, confirm_timeout=CONFIRM_TIMEOUT_S)
        metrics = Metrics()
        beats = HeartbeatCoalescer(publisher, "gw-slow", 50, 100, metrics)
        now = int(time.time() * 1000)

        amqp_proxy.set("latency", ms=SLOW_MS)
        # a plain beat (no status or capabilities change): it refreshes the node's TTL
        beats.add(Beat(node_id="node-a", conn_id="c-a", ts_ms=now, cpu_percent=12.5))
        await beats.flush()  # not confirmed within the timeout
        assert metrics.publish_failures.labels("heartbeat_batch")._value.get() == 1
        assert set(beats.pending) == {"node-a"}, "the unconfirmed beat was dropped"

        amqp_proxy.set("pass")
        await asyncio.sleep(SLOW_MS / 1000 + 0.3)  # what the proxy still holds goes through
        beats.add(Beat(node_id="node-b", conn_id="c-b", ts_ms=now + 1))
        await beats.flush()
        assert beats.pending == {}

        # the second batch carries node-a's beat again
        seen: list[set[str]] = []

        async def collect() -> bool:
            msg = await queue.get(no_ack=True, fail=False)
            while msg is not None:
                batch = HeartbeatBatch.model_validate_json(msg.body)
                seen.append({b.node_id for b in batch.beats})
                if any(b.node_id == "node-a" and b.cpu_percent == 12.5 for b in batch.beats):
                    if "node-b" in seen[-1]:
                        return True
                msg = await queue.get(no_ack=True, fail=False)
            return False

        await eventually(collect, timeout=10, what=f"node-a sent again with node-b: {seen}")
    finally:
        await slow.close()
        await direct.close()
        await delete_bus(amqp_url, topo.prefix)
