"""A ``job_assign`` that cannot be published yet (the broker restarting, the node's gateway
not yet back with its queue) is tried again while its reservation holds, instead of being
taken back at once: a broker restart used to burn all of a job's attempts in milliseconds and
fail it with NODE_UNAVAILABLE. On the real Redis and RabbitMQ (``Infra.open``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lingua_dispatcher.jobs import Jobs
from lingua_dispatcher.metrics import Metrics
from lingua_shared.bus import declare_queue
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.settings import Settings
from lingua_shared.testing import node_beat, node_registration


@pytest.fixture
async def jobs(redis, redis_url, amqp_url, bus_prefix) -> AsyncIterator[Jobs]:
    settings = Settings(
        redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test",
        instance_id="disp-test", ack_timeout_ms=10_000, job_deadline_ms=30_000,
        no_node_wait_ms=300, max_attempts=3,
    )  # fmt: skip
    async with Infra.open(settings) as infra:
        s = infra.scripts
        # one node, on gateway gw1, whose queue does not exist yet
        await s.register_node_v2(**node_registration("a", now_ms=now_ms(), ttl_ms=60_000))
        await s.heartbeat_with_pool_assign(**node_beat("a", now_ms=now_ms()))
        yield Jobs(infra, Metrics("disp-test"))


async def create(jobs: Jobs, job_id: str) -> dict[str, str]:
    now = now_ms()
    fields = {
        "session_id": "s1", "utterance_index": "0", "src_lang": "zh", "tgt_lang": "en",
        "pair_src": "zh", "pair_tgt": "en", "pipeline": "{}", "trace_id": "t-0",
        "audio_format": "pcm16", "sample_rate": "16000", "received_at_ms": str(now),
        "gateway_id": "gw-s", "conn_id": "cs",
    }  # fmt: skip
    await jobs.s.job_create(
        request_key="s1:0", job_id=job_id, now_ms=now, ttl_ms=600_000, fields=fields,
        audio="QUJD",
    )  # fmt: skip
    return fields


async def test_an_assign_whose_gateway_queue_comes_back_is_sent_on_the_same_attempt(jobs):
    fields = await create(jobs, "j1")
    dispatch = asyncio.create_task(jobs.dispatch("j1", 1, audio="QUJD", job=fields))
    await asyncio.sleep(0.6)  # the first publishes came back unroutable
    assert not dispatch.done()
    channel = await jobs.infra.consume_channel()
    queue = await declare_queue(channel, jobs.infra.topo.gateway_queue_spec("gw1"))
    await asyncio.wait_for(dispatch, 10)
    job = await jobs.read_job("j1")
    assert job is not None
    # the same attempt on the same node: nothing was taken back, no attempt spent
    assert (job["attempt"], job["node_id"], job["state"]) == ("1", "a", "assigned"), job
    msg = await queue.get(timeout=5, fail=True)
    assert b'"job_assign"' in msg.body and b'"j1"' in msg.body
    assert jobs.metrics.assign_publish_failed._value.get() >= 1
    await msg.ack()
