"""The dispatcher's side of a lost node, on the real Redis and RabbitMQ (``Infra.open``):

- ``on_node_lost`` takes the node's jobs back in one script call (``node_lost``), fenced by
  connection, and dispatches them again;
- a failover that the session's gap window cannot hold (the job is a hole of an ordered
  session with a later answer waiting, and less than ack lease + job deadline is left) fails
  at once with what happened, instead of running an attempt that the gap would overtake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lingua_dispatcher.jobs import Jobs
from lingua_dispatcher.metrics import Metrics
from lingua_dispatcher.node_events import NodeEvents
from lingua_shared.bus import declare_queue
from lingua_shared.events import NodeDisconnected
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.scripts import ScriptCode
from lingua_shared.settings import Settings
from lingua_shared.testing import node_beat, node_registration

# below ack lease + job deadline (1 s + 3 s): the window left after the hole opens can never
# hold another attempt, however fast the test runs (at exactly 4 s it held when the hole
# opened and the take-back ran in the same millisecond)
GAP_MS = 3_900


@pytest.fixture
async def events(redis, redis_url, amqp_url, bus_prefix) -> AsyncIterator[NodeEvents]:
    settings = Settings(
        redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test",
        instance_id="disp-test", ack_timeout_ms=1_000, job_deadline_ms=3_000,
        gap_timeout_ms=GAP_MS, no_node_wait_ms=300, max_attempts=3,
    )  # fmt: skip
    async with Infra.open(settings) as infra:
        channel = await infra.consume_channel()
        await declare_queue(channel, infra.topo.gateway_queue_spec("gw1"))  # nodes' gateway
        s = infra.scripts
        for n in ("a", "b"):
            await s.register_node_v2(**node_registration(n, now_ms=now_ms(), ttl_ms=60_000))
            await s.heartbeat_with_pool_assign(**node_beat(n, now_ms=now_ms()))
        await redis.hset(
            infra.keys.session("s1"),
            mapping={"gateway_id": "gw-s", "conn_id": "cs", "delivery": "ordered"},
        )
        yield NodeEvents(Jobs(infra, Metrics("disp-test")))


async def run_on(jobs: Jobs, job_id: str, index: int, node: str) -> None:
    s, now = jobs.s, now_ms()
    fields = {
        "session_id": "s1", "utterance_index": str(index), "src_lang": "zh", "tgt_lang": "en",
        "pair_src": "zh", "pair_tgt": "en", "pipeline": "{}", "trace_id": f"t-{index}",
        "audio_format": "pcm16", "sample_rate": "16000", "received_at_ms": str(now),
    }  # fmt: skip
    await s.job_create(
        request_key=f"s1:{index}", job_id=job_id, now_ms=now, ttl_ms=600_000, fields=fields,
        audio="QUJD",
    )  # fmt: skip
    # the other node is made busy for the selection, so the job lands on `node`
    other = "b" if node == "a" else "a"
    await jobs.infra.redis.hset(jobs.infra.keys.node(other), "status", "draining")
    await s.heartbeat_with_pool_assign(**node_beat(other, now_ms=now, status="draining"))
    sel = await jobs.select(job_id, 1, fields)
    assert (sel.code, sel.node_id) == (ScriptCode.RESERVED, node)
    await s.heartbeat_with_pool_assign(**node_beat(other, now_ms=now, status="ready"))


def lost(node: str) -> NodeDisconnected:
    return NodeDisconnected(
        node_id=node, conn_id=f"c-{node}", gateway_id="gw1", graceful=False, close_code=1006,
        ts_ms=now_ms(),
    )  # fmt: skip


async def job(events: NodeEvents, job_id: str) -> dict[str, str]:
    got = await events.jobs.read_job(job_id)
    assert got is not None
    return got


async def test_a_lost_node_has_its_jobs_dispatched_again(events: NodeEvents) -> None:
    await run_on(events.jobs, "j0", 0, "a")
    await events.on_node_lost(lost("a"))
    j0 = await job(events, "j0")
    assert (j0["state"], j0["attempt"], j0["node_id"]) in {
        ("assigned", "2", "b"),
        ("acked", "2", "b"),
    }


async def test_a_stale_drop_takes_nothing(events: NodeEvents) -> None:
    await run_on(events.jobs, "j0", 0, "a")
    s = events.s
    await s.register_node_v2(**node_registration("a", now_ms=now_ms(), ttl_ms=60_000,
                                                  conn_id="c-a2"))  # fmt: skip
    await events.on_node_lost(lost("a"))  # the drop of the replaced connection c-a
    j0 = await job(events, "j0")
    assert (j0["attempt"], j0["node_id"]) == ("1", "a")
    assert j0["state"] in ("assigned", "acked")


async def test_a_failover_the_gap_window_cannot_hold_fails_at_once(events: NodeEvents) -> None:
    jobs = events.jobs
    await run_on(jobs, "j0", 0, "a")
    await run_on(jobs, "j1", 1, "b")
    # utterance 1 is answered: it waits behind 0, whose hole now times out in GAP_MS
    done = await jobs.s.job_finish(
        job_id="j1", attempt=1, node_id="b", now_ms=now_ms(), outcome="done",
        payload={"type": "translation_result", "utterance_index": 1}, gap_ms=GAP_MS,
        session_ttl_ms=600_000,
    )  # fmt: skip
    assert done.code == ScriptCode.FINISHED and done.items == []
    await events.on_node_lost(lost("a"))
    j0 = await job(events, "j0")
    # no second attempt ran (nothing was reserved on b); the client is told now
    assert j0["state"] == "failed"
    assert await jobs.infra.redis.hget(jobs.infra.keys.node("b"), "reserved") == b"0"
    assert await jobs.infra.redis.hget(jobs.infra.keys.node("b"), "running") == b"0"
    assert jobs.metrics.no_node.labels("gap_window")._value.get() == 1
