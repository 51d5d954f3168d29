"""The job path (ack, result, partials, dedup, capacity) and draining, on the fake gateway."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lingua_shared.protocol import JobResult


def job(job_id: str = "j1", utterance: int = 0, attempt: int = 1, **extra):
    return {"type": "job_assign", "job_id": job_id, "attempt_id": attempt, "session_id": "s1",
            "utterance_index": utterance, "src_lang": "en", "tgt_lang": "zh", "audio": "AAAA",
            "audio_format": "opus", "sample_rate": 16000, "trace_id": f"t-{job_id}",
            "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": False}, **extra}  # fmt: skip


async def registered(gateway, start_agent, handler, **cfg):
    run = start_agent(handler, **cfg)
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    return run


async def test_job_is_acked_then_answered_with_matching_ids(gateway, start_agent, gated):
    handler = gated(partial="hel")
    run = await registered(gateway, start_agent, handler)
    await gateway.send(job("j1", utterance=7, attempt=2, lang_a="en", future_field=1))
    ack = (await gateway.nth("job_ack")).msg
    assert ack == {"type": "job_ack", "job_id": "j1", "attempt_id": 2, "node_id": "gw-1",
                   "session_id": "s1", "trace_id": "t-j1"}  # fmt: skip
    partial = (await gateway.nth("asr_partial")).msg
    assert partial["text"] == "hel" and partial["is_final"] is False
    assert partial["job_id"] == "j1" and partial["utterance_index"] == 7
    assert not gateway.of_type("job_result")
    assert run.agent.jobs.running_jobs == 1
    hb = await gateway.nth("node_heartbeat", len(gateway.of_type("node_heartbeat")) + 1)
    assert hb.msg["resource_usage"]["running_jobs"] == 1
    handler.gate.set()
    result = JobResult.model_validate((await gateway.nth("job_result")).msg)
    assert (result.job_id, result.attempt_id, result.node_id) == ("j1", 2, "gw-1")
    assert (result.session_id, result.utterance_index, result.trace_id) == ("s1", 7, "t-j1")
    assert result.success and result.error is None
    assert result.text_asr == "asr 7" and result.text_translated == "translated"
    assert result.processing_time_ms is not None and result.processing_time_ms >= 0
    frames = [f.msg["type"] for f in gateway.frames if f.msg["type"] != "node_heartbeat"]
    assert frames.index("job_ack") < frames.index("asr_partial") < frames.index("job_result")
    assert run.agent.jobs.completed == 1 and run.agent.jobs.running_jobs == 0


async def test_handler_exception_becomes_internal_error(gateway, start_agent, gated):
    handler = gated(fail=RuntimeError("model exploded"))
    handler.gate.set()
    await registered(gateway, start_agent, handler)
    await gateway.send(job("j9"))
    result = (await gateway.nth("job_result")).msg
    assert result["success"] is False and result["job_id"] == "j9"
    assert result["error"]["code"] == "INTERNAL_ERROR"
    assert "model exploded" in result["error"]["message"]


async def test_duplicates_and_overload_are_refused(gateway, start_agent, gated):
    handler = gated()
    run = await registered(gateway, start_agent, handler, capacity=2)
    await gateway.send(job("a", utterance=1))
    await gateway.nth("job_ack", job_id="a")
    await gateway.send(job("a", utterance=1))  # same job, same attempt: a replay
    dup = (await gateway.nth("job_result", job_id="a")).msg
    assert dup["success"] is False and dup["error"]["code"] == "INVALID_MESSAGE"
    assert dup["error"]["details"] == {"refused": True}
    await gateway.send(job("b", utterance=1))  # another job for an utterance in flight
    same_utt = (await gateway.nth("job_result", job_id="b")).msg
    assert same_utt["error"]["code"] == "INVALID_MESSAGE"
    await gateway.send(job("c", utterance=2, session_id="s2"))  # another session: runs now
    await gateway.nth("job_ack", job_id="c")
    await gateway.send(job("d", utterance=3, session_id="s3"))  # capacity 2 is full
    full = (await gateway.nth("job_result", job_id="d")).msg
    assert full["error"]["code"] == "NODE_OVERLOADED"
    assert len(handler.jobs) == 2 and len(gateway.of_type("job_ack")) == 2
    handler.gate.set()
    await gateway.nth("job_result", job_id="a", success=True)
    await gateway.nth("job_result", job_id="c", success=True)
    await gateway.send(job("a", utterance=1))  # a finished attempt is still remembered
    late = await gateway.nth("job_result", 2, job_id="a", success=False)
    assert late.msg["error"]["code"] == "INVALID_MESSAGE"
    await gateway.send(job("a", utterance=1, attempt=2))  # a new attempt is a new job
    await gateway.nth("job_result", job_id="a", attempt_id=2, success=True)
    assert run.agent.jobs.rejected == 4


async def test_job_cancel_stops_the_handler_without_a_result(gateway, start_agent, gated, caplog):
    caplog.set_level(logging.INFO, logger="lingua_node_agent")
    handler = gated()
    run = await registered(gateway, start_agent, handler)
    await gateway.send(job("x"))
    await gateway.nth("job_ack")
    await gateway.send(
        {"type": "job_cancel", "job_id": "x", "trace_id": "t-x", "reason": "redispatched"}
    )
    await gateway.wait_for(lambda: run.agent.jobs.running_jobs == 0)
    await gateway.nth("node_heartbeat", len(gateway.of_type("node_heartbeat")) + 1)
    assert not gateway.of_type("job_result")
    logged = [r for r in caplog.records if r.getMessage() == "job_cancel"]
    assert [(r.job_id, r.trace_id, r.reason, r.cancelled) for r in logged] == [
        ("x", "t-x", "redispatched", True)
    ]


async def test_drain_waits_for_the_job_then_closes_with_1000(gateway, start_agent, gated):
    handler = gated()
    run = await registered(gateway, start_agent, handler, drain_timeout_s=5)
    await gateway.send(job("long"))
    await gateway.nth("job_ack")
    run.agent.stop(drain=True)
    beat = await gateway.nth("node_heartbeat", status="draining")
    assert beat.msg["resource_usage"]["running_jobs"] == 1
    await gateway.send(job("late", utterance=5))
    late = (await gateway.nth("job_result", job_id="late")).msg
    assert late["success"] is False and late["error"]["code"] == "NODE_UNAVAILABLE"
    await asyncio.sleep(0.3)  # still draining: connection open, job running
    assert 0 not in gateway.close_codes and not run.task.done()
    handler.gate.set()
    done = (await gateway.nth("job_result", job_id="long")).msg
    assert done["success"] is True
    assert await gateway.closed(0) == 1000
    async with asyncio.timeout(3):
        await run.task
    assert run.agent.reconnects == 0 and run.agent.status == "stopped"
    assert len(gateway.conns) == 1


async def test_drain_timeout_fails_the_job_and_still_closes_with_1000(gateway, start_agent, gated):
    handler = gated()  # never released
    run = await registered(gateway, start_agent, handler, drain_timeout_s=0.3)
    await gateway.send(job("stuck"))
    await gateway.nth("job_ack")
    run.agent.stop()
    result = (await gateway.nth("job_result", job_id="stuck")).msg
    assert result["success"] is False and result["error"]["code"] == "NODE_UNAVAILABLE"
    assert await gateway.closed(0) == 1000
    async with asyncio.timeout(3):
        await run.task


async def test_gateway_drain_command_ends_the_agent(gateway, start_agent, gated):
    run = await registered(gateway, start_agent, gated())
    await gateway.send({"type": "node_control", "command": "drain", "reason": "rollout"})
    assert await gateway.closed(0) == 1000
    async with asyncio.timeout(3):
        await run.task
    assert run.agent.reconnects == 0 and len(gateway.conns) == 1


async def test_job_before_the_ack_is_ignored(gateway, start_agent, gated):
    gateway.register_reply = lambda msg, conn: None  # hold the ack; a job comes first
    run = start_agent(gated())
    await gateway.nth("node_register")
    await gateway.send(job("early"))
    await gateway.send(gateway.default_reply({}, 0))
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    await gateway.nth("node_heartbeat")
    assert not gateway.of_type("job_ack") and not gateway.of_type("job_result")


async def test_second_stop_without_drain_cuts_the_drain_short(gateway, start_agent, gated):
    run = await registered(gateway, start_agent, gated(), drain_timeout_s=30)
    await gateway.send(job("slow"))
    await gateway.nth("job_ack")
    run.agent.stop(drain=True)
    await gateway.nth("node_heartbeat", status="draining")
    run.agent.stop(drain=False)
    result = (await gateway.nth("job_result", job_id="slow")).msg
    assert result["error"]["code"] == "NODE_UNAVAILABLE"
    assert await gateway.closed(0, limit_s=2) == 1000
    async with asyncio.timeout(2):
        await run.task


async def test_a_1012_moves_the_agent_to_the_next_gateway_with_its_running_job(
    gateway, gateway_b, start_agent, gated
):
    """Two replicas: the first restarts (1012) mid-job; the agent registers on the second
    under the same id and the job's result, finished while no socket was up, goes there."""
    handler = gated()
    run = start_agent(handler, node_id="node-m", gateway=f"{gateway.url},{gateway_b.url}")
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    await gateway.send(job("j1"))
    await gateway.nth("job_ack")
    await gateway.conns[0].close(1012, "gateway restarting")
    await gateway.closed(0)
    handler.gate.set()  # the job ends while the agent is between connections
    again = await gateway_b.nth("node_register")
    assert again.msg["node_id"] == "node-m"
    result = JobResult.model_validate((await gateway_b.nth("job_result")).msg)
    assert (result.job_id, result.success) == ("j1", True)
    assert run.agent.close_codes[0] == 1012
    assert run.agent.gateway_url == gateway_b.url
    assert run.agent.jobs.unsent == 0
    assert not gateway.of_type("job_result")
    assert len(gateway.conns) == 1  # it did not come back to the restarting replica


def test_gateway_lists_parse_and_bad_urls_are_refused():
    from lingua_node_agent.config import config_from_mapping
    from lingua_node_agent.errors import ConfigError

    cfg = config_from_mapping({"gateway": "ws://a:1/ws/node, ws://b:2/ws/node"})
    assert cfg.gateway_urls() == ["ws://a:1/ws/node", "ws://b:2/ws/node"]
    cfg = config_from_mapping({"gateway": ["ws://a:1/ws/node", "wss://b/ws/node"]})  # TOML list
    assert cfg.gateway_urls() == ["ws://a:1/ws/node", "wss://b/ws/node"]
    for bad in ("ws://a/ws/node,http://b/", " , ", [], [1]):
        with pytest.raises(ConfigError):
            config_from_mapping({"gateway": bad})
