"""The job path end to end with every service as real processes, two gateway replicas and two
dispatcher replicas: nodes connect to gw-a, clients to gw-b (requirement J1-J7)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import pytest

from lingua_node_agent import JobContext, JobOutcome
from lingua_shared.bus import delete_bus
from lingua_shared.protocol import JobAssign
from tests.support.agents import node, running
from tests.support.helpers import eventually, metric
from tests.support.invariants import settle_idle
from tests.support.sessions import PCM, answers, open_session, send_utterance, session_url
from tests.support.stack import JOB_ENV, JOB_SERVICES, started_stack, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def job_stack(redis, stack_env, tmp_path, request):
    with started_stack({**stack_env, **JOB_ENV}, tmp_path, request, JOB_SERVICES) as s:
        yield s


class SlowFirst:
    """Earlier utterances take longer, so results finish out of order."""

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        await asyncio.sleep(0.05 * (6 - job.utterance_index % 6))
        return JobOutcome(
            text_asr=f"asr #{job.utterance_index}",
            text_translated=f"{job.src_lang}->{job.tgt_lang} #{job.utterance_index}",
        )


async def test_results_reach_the_client_in_order_exactly_once(job_stack, redis):
    nodes = [node(job_stack, f"node-o{i}", SlowFirst(), capacity=3) for i in range(2)]
    async with running(*nodes):
        ws, sid = await open_session(session_url(job_stack))
        async with ws:
            for i in range(6):
                await send_utterance(ws, sid, i * 2)
            got = await answers(ws, 6)
            assert [m["type"] for m in got] == ["translation_result"] * 6, got
            assert [m["utterance_index"] for m in got] == list(range(6))
            assert [m["text_translated"] for m in got] == [f"zh->en #{i}" for i in range(6)]
            assert all(m["session_id"] == sid for m in got)
            assert len({m["job_id"] for m in got}) == 6
            with pytest.raises(TimeoutError):  # nothing more: exactly once
                await answers(ws, 1, timeout=0.5)
        # both nodes worked (least-loaded selection spreads 6 jobs over 2 x 3 slots)
        assert all(n.jobs.completed > 0 for n in nodes), [n.jobs.completed for n in nodes]
    await settle_idle(redis, job_stack.keys)


async def test_a_retried_utterance_makes_one_job(job_stack, redis):
    agent = node(job_stack, "node-dup")
    async with running(agent):
        ws, sid = await open_session(session_url(job_stack))
        async with ws:
            msg = {
                "type": "utterance",
                "session_id": sid,
                "utterance_index": 0,
                "manual_cut": True,
                "src_lang": "zh",
                "tgt_lang": "en",
                "audio": base64.b64encode(PCM).decode(),
                "audio_format": "pcm16",
                "sample_rate": 16000,
            }
            for _ in range(3):
                await ws.send(json.dumps(msg))
            got = await answers(ws, 1)
            assert got[0]["type"] == "translation_result" and got[0]["utterance_index"] == 0
            with pytest.raises(TimeoutError):
                await answers(ws, 1, timeout=1.0)
        assert agent.jobs.completed == 1
        jobs = [
            k
            for k in await redis.keys(job_stack.keys.prefix.replace("{", "[{]") + "job:*")
            if not k.endswith(b":audio")
        ]
        assert len(jobs) == 1
    await settle_idle(redis, job_stack.keys)


class Hang:
    """Takes a job and never answers: the node will be killed with it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_a_node_killed_mid_job_has_its_job_redispatched_and_its_slot_freed(job_stack, redis):
    keys = job_stack.keys
    hang = Hang()
    doomed = node(job_stack, "node-doomed", hang, backoff_base_s=60, backoff_cap_s=60)
    healthy = node(job_stack, "node-healthy")
    async with running(doomed):
        ws, sid = await open_session(session_url(job_stack))
        async with ws:
            await send_utterance(ws, sid, 0)
            await asyncio.wait_for(hang.started.wait(), 5)
            await eventually(
                lambda: _running_is(redis, keys, "node-doomed", 1),
                what="the job_ack to commit the lease",
            )
            async with running(healthy):
                assert doomed._ws is not None
                doomed._ws.transport.abort()  # dies without a close frame
                got = await answers(ws, 1, timeout=10)
                assert got[0]["type"] == "translation_result", got
                assert got[0]["utterance_index"] == 0
                assert healthy.jobs.completed == 1
                reserved, running_ = await redis.hmget(
                    keys.node("node-doomed"), "reserved", "running"
                )
                assert int(reserved or 0) == 0 and int(running_ or 0) == 0
    await settle_idle(redis, keys)


async def test_no_eligible_node_answers_no_available_node_promptly(job_stack, redis):
    async with running(node(job_stack, "node-enzh")):
        ws, sid = await open_session(session_url(job_stack), src="fr", tgt="de")
        async with ws:
            t0 = time.monotonic()
            await send_utterance(ws, sid, 0)
            events: list[dict] = []
            got = await answers(ws, 1, timeout=5, events=events)
            # a failed utterance, as lingua reports one: never an `error` (an alert)
            assert got[0]["type"] == "missing_result" and got[0]["reason"] == "error", got
            assert got[0]["error_code"] == "NO_AVAILABLE_NODE"
            assert got[0]["utterance_index"] == 0
            (event,) = events
            assert (event["event"], event["status"], event["error_code"]) == (
                "ERROR",
                "error",
                "NO_AVAILABLE_NODE",
            )
            assert "no node serves fr->de" in event["hint"] and event["utterance_index"] == 0
            assert time.monotonic() - t0 < 2.0
        unserved = await redis.hgetall(job_stack.keys.unserved)
        assert unserved == {b"fr:de": b"1"}
    await settle_idle(redis, job_stack.keys)


async def _running_is(redis, keys, node_id: str, n: int) -> bool:
    return int(await redis.hget(keys.node(node_id), "running") or 0) == n


class NoModel:
    """Every job fails with MODEL_NOT_AVAILABLE, as a node whose model is not loaded."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.calls += 1
        return JobOutcome.failure(
            "MODEL_NOT_AVAILABLE", "asr model not loaded", {"service_type": "asr"}
        )


async def test_model_not_available_cools_the_node_down_and_the_job_goes_elsewhere(job_stack, redis):
    keys = job_stack.keys
    broken = NoModel()
    async with running(node(job_stack, "node-a-nomodel", broken, capacity=4)):
        ws, sid = await open_session(session_url(job_stack))
        async with ws, running(node(job_stack, "node-z-fine")):
            # the broken node is idle and lexically first: it gets the first job, fails it,
            # is cooled down, and the job is redispatched to the other node
            await send_utterance(ws, sid, 0)
            first = await answers(ws, 1)
            assert first[0]["type"] == "translation_result", first
            assert broken.calls == 1
            until = int(await redis.hget(keys.node("node-a-nomodel"), "unavail:asr") or 0)
            assert until > time.time() * 1000
            # during the cool-down selection skips it, though it is the least loaded
            for i in range(1, 4):
                await send_utterance(ws, sid, i * 2)
            rest = await answers(ws, 3)
            assert [m["type"] for m in rest] == ["translation_result"] * 3
            assert broken.calls == 1
            # it sits in the score band of nodes cooling asr, never among the free nodes a job
            # needing asr reads (lib/pools.lua), heartbeats or not
            for shard in await redis.smembers(keys.node_pools("node-a-nomodel")):
                score = await redis.zscore(keys.pool(shard.decode()), "node-a-nomodel")
                assert 2 <= score < 1000, score
    await settle_idle(redis, keys)


async def test_an_utterance_refused_by_a_full_queue_is_answered_once_in_its_place(
    redis, stack_env, tmp_path, request
):
    """Work queues are bounded (reject-publish). With no dispatcher running, utterances 0 and 1
    fill a 2-message queue and 2 is refused: its missing_result is kept in the session's order
    (and a ui_event says why), so once a dispatcher and a node come, the client gets 0, 1
    (results), 2 (missing), 3
    (a result) — once each, in order, without waiting for a gap timeout. (A quorum queue may
    take a message or two over its bound, so the refused index is found, not assumed.)"""
    env = {
        **stack_env,
        **JOB_ENV,
        "LINGUA_BUS_PREFIX": unique("lingua-test-full"),  # queues declared with the bound
        "LINGUA_AMQP_WORK_QUEUE_MAX_LENGTH": "2",
        "LINGUA_GAP_TIMEOUT_MS": "60000",  # a gap would be noticed, not papered over
    }
    services = [("nm-1", "node-manager"), ("gw-b", "gateway")]
    try:
        with started_stack(env, tmp_path, request, services) as s:
            ws, sid = await open_session(session_url(s))
            # the first index the full queue refuses (a quorum queue may take one over)
            refused = None
            for i in range(6):
                await send_utterance(ws, sid, seq=2 * i)
                with contextlib.suppress(AssertionError):
                    await eventually(lambda: _refused(s), timeout=1.5, what="a refusal")
                    refused = i
                    break
            assert refused is not None and refused >= 2, refused
            # started while the client is connected: wait off the event loop, which must keep
            # answering the gateway's pings; the node first, so the queued jobs find it
            await asyncio.to_thread(s.start("gw-a", "gateway").wait_ready)
            async with running(node(s, "node-full")):
                await asyncio.to_thread(s.start("disp-1", "dispatcher").wait_ready)
                events: list[dict] = []
                got = await answers(ws, refused + 1, events=events)
                await send_utterance(ws, sid, seq=100)
                got += await answers(ws, 1, events=events)
            kinds = [(m["type"], m.get("utterance_index")) for m in got]
            assert kinds == [
                *(("translation_result", i) for i in range(refused)),
                ("missing_result", refused),
                ("translation_result", refused + 1),
            ]
            missing = got[refused]
            assert missing["reason"] == "error"
            assert missing["error_code"] == "SCHEDULER_DEPENDENCY_DOWN"
            (event,) = events
            assert event["utterance_index"] == refused and "overloaded" in event["hint"]
            await ws.close()
    finally:
        await delete_bus(env["LINGUA_AMQP_URL"], env["LINGUA_BUS_PREFIX"])


async def _refused(stack) -> bool:
    return metric(stack, "gw-b", "lingua_gateway_publish_failures_total", kind="job_request") >= 1
