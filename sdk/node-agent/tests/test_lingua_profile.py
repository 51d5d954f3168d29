"""The lingua profile (lingua's own agent, defects included) and per-session job order."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.server import serve

from lingua_node_agent import AgentConfig, ConfigError, JobContext, JobOutcome, NodeAgent
from lingua_node_agent.capabilities import build_register
from lingua_node_agent.config import config_from_mapping, load_toml
from lingua_shared.protocol import JobAssign, NodeRegister, derive_capabilities

DUP_JOB = "DUPLICATE_JOB_ID: job_id already processed by this node"
DUP_SLOT = (
    "DUPLICATE_UTTERANCE_INDEX: another job already accepted for this session_id and "
    "utterance_index"
)


def job(job_id: str, utterance: int = 0, attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "job_assign", "job_id": job_id, "attempt_id": attempt, "session_id": "s1",
            "utterance_index": utterance, "src_lang": "en", "tgt_lang": "zh", "audio": "AAAA",
            "audio_format": "opus", "sample_rate": 16000, "trace_id": f"t-{job_id}",
            "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": False}, **extra}  # fmt: skip


async def registered(start_agent, handler, **cfg):
    run = start_agent(handler, **cfg)
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    return run


async def until(predicate: Callable[[], Any], limit_s: float = 3.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.01)


class Scripted:
    """Answers each job with ``texts[job_id]`` (default ``asr <job_id>``); the jobs in
    ``gated`` wait for ``release(job_id)``. Records the order in which jobs started."""

    def __init__(self, texts: dict[str, str] | None = None, gated: set[str] | None = None):
        self.texts = texts or {}
        self.gated = gated or set()
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: list[str] = []

    def release(self, job_id: str) -> None:
        self.gates[job_id].set()

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.started.append(job.job_id)
        if job.job_id in self.gated:
            await self.gates[job.job_id].wait()
        return JobOutcome(text_asr=self.texts.get(job.job_id, f"asr {job.job_id}"),
                          text_translated="t")  # fmt: skip


def result_ids(gateway) -> list[str]:
    return [f.msg["job_id"] for f in gateway.of_type("job_result")]


# --------------------------------------------------------------------- configuration


def test_profile_settings_and_defaults(tmp_path):
    assert AgentConfig().effective_heartbeat_interval_ms() == 1000
    assert AgentConfig(profile="lingua").effective_heartbeat_interval_ms() == 15000
    explicit = AgentConfig(profile="lingua", heartbeat_interval_ms=200)
    assert explicit.effective_heartbeat_interval_ms() == 200
    assert NodeAgent(AgentConfig(profile="lingua")).heartbeat_interval_s == 15.0
    assert NodeAgent(AgentConfig()).heartbeat_interval_s == 1.0
    cfg = config_from_mapping({"profile": "lingua", "reconnect-delay-s": 0.5})
    assert cfg.lingua and cfg.reconnect_delay_s == 0.5
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nprofile = "lingua"\n')
    assert load_toml(path).profile == "lingua"
    with pytest.raises(ConfigError, match="profile"):
        config_from_mapping({"profile": "electron"})
    with pytest.raises(ConfigError, match="profile"):
        NodeAgent(AgentConfig(profile="electron"))
    with pytest.raises(ConfigError, match="heartbeat_interval_ms"):
        NodeAgent(AgentConfig(profile="lingua", heartbeat_interval_ms=10))
    standard = build_register(AgentConfig(lang_sets=[["en", "zh"]], capacity=3)).to_wire()
    assert standard["acks_jobs"] is True and standard["heartbeat_interval_ms"] == 1000
    assert standard["max_concurrent_jobs"] == 3 and standard["lang_sets"] == [["en", "zh"]]


async def test_lingua_registers_and_beats_as_lingua_does(gateway, start_agent):
    gateway.ack_interval_ms = 100  # lingua's agent ignores the ack's interval
    run = start_agent(profile="lingua", heartbeat_interval_ms=400, region="eu", gpu_tier="a100",
                      lang_sets=[["en", "zh"]], tts_langs=["en"], capacity=3)  # fmt: skip
    reg = (await gateway.nth("node_register")).msg
    assert "node_id" in reg and reg["node_id"] is None  # null, not left out
    assert reg["accept_public_jobs"] is True
    for ours in ("lang_sets", "max_concurrent_jobs", "heartbeat_interval_ms", "acks_jobs",
                 "region", "gpu_tier"):  # fmt: skip
        assert ours not in reg, ours
    caps = derive_capabilities(NodeRegister.model_validate(reg))
    assert caps.lang_sets == [["en", "zh"]] and not caps.acks_jobs
    assert caps.region == "default" and caps.capacity == 4  # the gateway's defaults
    await gateway.nth("node_heartbeat")
    await asyncio.sleep(1.0)
    beats = gateway.of_type("node_heartbeat")
    assert 2 <= len(beats) <= 4, len(beats)  # every 400 ms, not the ack's 100 ms
    for beat in beats:
        msg = beat.msg
        assert msg["node_id"] == "gw-1" and "status" not in msg
        assert {"installed_services", "capability_by_type", "language_capabilities",
                "resource_usage"} <= msg.keys()  # fmt: skip
        assert msg["language_capabilities"]["asr_languages"] == ["en", "zh"]
        assert msg["language_capabilities"]["tts_languages"] == ["en"]
        assert msg["resource_usage"]["gpu_percent"] == 0.0
    assert run.agent.registrations == 1


# --------------------------------------------------------------------- jobs


async def test_lingua_never_acks_and_streams_partials_only_when_asked(gateway, start_agent, gated):
    handler = gated(partial="hel")
    handler.gate.set()
    await registered(start_agent, handler, profile="lingua")
    await gateway.send(job("j1", 1))
    first = (await gateway.nth("job_result", job_id="j1")).msg
    assert first["success"] is True and first["text_asr"] == "asr 1"
    assert isinstance(first["processing_time_ms"], int)  # whole milliseconds, as Date.now()
    await gateway.send(job("j2", 2, enable_streaming_asr=True))
    await gateway.nth("job_result", job_id="j2")
    assert [f.msg["job_id"] for f in gateway.of_type("asr_partial")] == ["j2"]
    assert not gateway.of_type("job_ack") and not gateway.of_type("job_started")


async def test_lingua_refuses_repeats_with_its_exact_error(gateway, start_agent, gated):
    handler = gated()
    handler.gate.set()
    run = await registered(start_agent, handler, profile="lingua", capacity=1)
    await gateway.send(job("a", utterance=1))
    await gateway.nth("job_result", job_id="a", success=True)
    await gateway.send(job("a", utterance=1, attempt=2))  # a new attempt of a job id seen
    dup = (await gateway.nth("job_result", job_id="a", success=False)).msg
    assert dup == {"type": "job_result", "job_id": "a", "attempt_id": 2, "node_id": "gw-1",
                   "session_id": "s1", "utterance_index": 1, "success": False,
                   "processing_time_ms": 0, "trace_id": "t-a",
                   "error": {"code": "PROCESSING_ERROR", "message": DUP_JOB}}  # fmt: skip
    await gateway.send(job("b", utterance=1))  # a new job for an utterance long finished
    slot = (await gateway.nth("job_result", job_id="b")).msg
    assert slot == {"type": "job_result", "job_id": "b", "attempt_id": 1, "node_id": "gw-1",
                    "session_id": "s1", "utterance_index": 1, "success": False,
                    "processing_time_ms": 0, "trace_id": "t-b",
                    "error": {"code": "PROCESSING_ERROR", "message": DUP_SLOT}}  # fmt: skip
    # No capacity refusal: lingua's agent takes every job (capacity 1, two at once here).
    handler.gate.clear()
    await gateway.send(job("c", utterance=2, session_id="s2"))
    await gateway.send(job("d", utterance=3, session_id="s3"))
    await until(lambda: len(handler.jobs) == 3)
    assert run.agent.jobs.running_jobs == 2
    handler.gate.set()
    await gateway.nth("job_result", job_id="c", success=True)
    await gateway.nth("job_result", job_id="d", success=True)
    assert run.agent.jobs.rejected == 2 and len(handler.jobs) == 3


async def test_lingua_handler_exception_is_a_processing_error(gateway, start_agent, gated):
    handler = gated(fail=RuntimeError("model exploded"))
    handler.gate.set()
    await registered(start_agent, handler, profile="lingua")
    await gateway.send(job("x"))
    result = (await gateway.nth("job_result")).msg
    assert result["error"] == {"code": "PROCESSING_ERROR", "message": "model exploded"}


async def test_lingua_withholds_a_result_repeating_the_last_sent_text(gateway, start_agent):
    texts = {"j0": "hello world", "j1": "  hello   world ", "j2": "other", "j3": "hello world",
             "k0": "hello world"}  # fmt: skip
    run = await registered(start_agent, Scripted(texts), profile="lingua")
    for i in range(4):
        await gateway.send(job(f"j{i}", utterance=i))
    await gateway.send(job("k0", utterance=0, session_id="s2"))  # same text, other session
    await gateway.nth("job_result", job_id="j3")
    await gateway.nth("job_result", job_id="k0")
    await asyncio.sleep(0.1)
    # j1 repeats j0 once whitespace is normalised: nothing at all is sent for it. j3 repeats
    # j0 too, but the last text sent for s1 is then j2's.
    assert sorted(result_ids(gateway)) == ["j0", "j2", "j3", "k0"]
    assert run.agent.jobs.withheld == 1 and run.agent.jobs.completed == 5


async def test_standard_profile_sends_every_result(gateway, start_agent):
    run = await registered(start_agent, Scripted({"j0": "same", "j1": "same"}))
    await gateway.send(job("j0", utterance=0))
    await gateway.send(job("j1", utterance=1))
    await gateway.nth("job_result", job_id="j1")
    assert result_ids(gateway) == ["j0", "j1"] and run.agent.jobs.withheld == 0


@pytest.mark.parametrize("profile", ["standard", "lingua"])
async def test_a_sessions_jobs_run_in_order_while_other_sessions_run(gateway, start_agent, profile):
    handler = Scripted(gated={"a1", "b1"})
    run = await registered(start_agent, handler, profile=profile)
    await gateway.send(job("a1", utterance=1, session_id="A"))
    await gateway.send(job("a2", utterance=2, session_id="A"))  # instant, if it were started
    await gateway.send(job("b1", utterance=1, session_id="B"))
    await until(lambda: handler.started == ["a1", "b1"])
    await asyncio.sleep(0.2)
    assert handler.started == ["a1", "b1"], "a2 must wait for a1"
    assert run.agent.jobs.running_jobs == 3  # the queued a2 holds a slot
    assert not gateway.of_type("job_result")
    acks = [f.msg["job_id"] for f in gateway.of_type("job_ack")]
    assert acks == ([] if profile == "lingua" else ["a1", "a2", "b1"])  # acked on arrival
    handler.release("b1")  # session B goes on without waiting for A
    await gateway.nth("job_result", job_id="b1")
    assert result_ids(gateway) == ["b1"] and handler.started == ["a1", "b1"]
    handler.release("a1")
    await gateway.nth("job_result", job_id="a2")
    assert result_ids(gateway) == ["b1", "a1", "a2"]
    assert handler.started == ["a1", "b1", "a2"]
    await until(lambda: run.agent.jobs.running_jobs == 0)


async def test_queued_jobs_hold_capacity_and_a_cancelled_one_lets_the_next_run(
    gateway, start_agent
):
    handler = Scripted(gated={"a1"})
    run = await registered(start_agent, handler, capacity=3)
    for i in (1, 2, 3):
        await gateway.send(job(f"a{i}", utterance=i, session_id="A"))
    await gateway.send(job("b1", utterance=1, session_id="B"))
    full = (await gateway.nth("job_result", job_id="b1")).msg
    assert full["error"]["code"] == "NODE_OVERLOADED"  # a2 and a3 wait, yet count
    await gateway.send({"type": "job_cancel", "job_id": "a2", "trace_id": "t-a2",
                        "reason": "redispatched"})  # fmt: skip
    await until(lambda: run.agent.jobs.running_jobs == 2)  # a2's slot is free at once
    await asyncio.sleep(0.2)
    assert handler.started == ["a1"], "a3 must still wait for a1"
    handler.release("a1")
    await gateway.nth("job_result", job_id="a3")
    assert result_ids(gateway) == ["b1", "a1", "a3"] and handler.started == ["a1", "a3"]


# --------------------------------------------------------------------- connection


async def test_lingua_ignores_node_control_and_error(gateway, start_agent):
    run = start_agent(profile="lingua")
    await gateway.nth("node_heartbeat")
    for msg in (
        {"type": "node_control", "command": "reregister", "reason": "redis lost"},
        {"type": "node_control", "command": "drain", "reason": "rollout"},
        {"type": "error", "code": "NODE_NOT_REGISTERED", "message": "who are you"},
        {"type": "error", "code": "INVALID_CAPABILITY_SCHEMA", "message": "no"},
        {"type": "error", "code": "SCHEDULER_DEPENDENCY_DOWN", "message": "redis"},
    ):
        await gateway.send(msg)
    seen = len(gateway.of_type("node_heartbeat"))
    await gateway.nth("node_heartbeat", seen + 3)
    assert len(gateway.of_type("node_register")) == 1 and len(gateway.conns) == 1
    assert 0 not in gateway.close_codes and not run.task.done()
    assert run.agent.status == "ready" and not run.agent.draining
    assert all("status" not in f.msg for f in gateway.of_type("node_heartbeat"))


async def test_lingua_waits_for_its_ack_for_ever(gateway, start_agent):
    gateway.register_reply = lambda msg, conn: None
    run = start_agent(profile="lingua", register_timeout_s=0.2)
    await gateway.nth("node_register")
    await asyncio.sleep(0.6)
    assert run.agent.connections == 1 and 0 not in gateway.close_codes
    assert not gateway.of_type("node_heartbeat")  # no id yet: nothing to beat with


async def test_lingua_reconnects_once_after_a_close_and_never_after_a_second(gateway, start_agent):
    run = start_agent(profile="lingua", reconnect_delay_s=0.3)
    await gateway.nth("node_heartbeat")
    gateway.register_reply = lambda msg, conn: (
        None if conn == 1 else gateway.default_reply(msg, conn)
    )
    closed_at = asyncio.get_running_loop().time()
    await gateway.conns[0].close(1012, "gateway restarting")
    again = await gateway.nth("node_register", 2)
    assert again.conn == 1 and again.msg["node_id"] == "gw-1"
    assert again.at - closed_at >= 0.25  # the fixed delay, no backoff jitter
    # It knows its id, so it beats on the new socket before any ack (as lingua's agent).
    early = await gateway.nth("node_heartbeat", conn=1)
    assert early.msg["node_id"] == "gw-1" and not run.agent.registered.is_set()
    await gateway.send(gateway.default_reply({"node_id": "gw-1"}, 1), conn=1)
    await until(run.agent.registered.is_set)
    await gateway.conns[1].close(1012, "gateway restarting again")
    await gateway.closed(1)
    await asyncio.sleep(1.2)  # four reconnect delays
    assert len(gateway.conns) == 2, "a second close must not be survived"
    assert run.agent.reconnects == 1 and run.agent.connections == 2
    assert run.agent.status == "disconnected" and not run.agent.connected
    assert not run.task.done()  # the process lives on, disconnected, until stopped


async def test_lingua_never_retries_once_its_reconnect_failed():
    conns: list[Any] = []

    async def handler(ws):
        conns.append(ws)
        async for raw in ws:
            if json.loads(raw).get("type") == "node_register":
                await ws.send(json.dumps({"type": "node_register_ack", "node_id": "n-1"}))

    server = await serve(handler, "127.0.0.1", 0)
    port = next(iter(server.sockets)).getsockname()[1]
    agent = NodeAgent(AgentConfig(gateway=f"ws://127.0.0.1:{port}/ws/node", profile="lingua",
                                  reconnect_delay_s=0.2, heartbeat_interval_ms=100))  # fmt: skip
    task = asyncio.create_task(agent.run())
    second = None
    try:
        await until(agent.registered.is_set)
        server.close()  # the gateway goes away: its port refuses connections
        await server.wait_closed()
        await until(lambda: agent.reconnects == 1 and agent.status == "disconnected")
        # The gateway is back on the same port; lingua's agent does not try again.
        second = await serve(handler, "127.0.0.1", port)
        await asyncio.sleep(0.8)
        assert len(conns) == 1 and agent.connections == 1 and agent.reconnects == 1
    finally:
        agent.stop(drain=False)
        async with asyncio.timeout(3):
            await task
        if second is not None:
            second.close()
            await second.wait_closed()


async def test_lingua_drops_a_result_finished_while_disconnected(gateway, start_agent, gated):
    handler = gated()
    run = await registered(start_agent, handler, profile="lingua", reconnect_delay_s=0.3)
    await gateway.send(job("j1"))
    await until(lambda: handler.jobs)
    await gateway.conns[0].close(1012, "gateway restarting")
    await until(lambda: not run.agent.connected)
    handler.gate.set()  # the job ends while no socket is up
    await until(lambda: run.agent.jobs.dropped == 1)
    await gateway.nth("node_heartbeat", conn=1)  # back, registered again
    await asyncio.sleep(0.2)
    assert not gateway.of_type("job_result") and run.agent.jobs.unsent == 0


async def test_lingua_stop_closes_without_a_status_code(gateway, start_agent, gated):
    handler = gated()  # never released
    run = await registered(start_agent, handler, profile="lingua", drain_timeout_s=5)
    await gateway.send(job("j1"))
    await until(lambda: handler.jobs)
    run.agent.stop(drain=True)  # lingua's agent knows no drain: it closes at once
    assert await gateway.closed(0, limit_s=2) == 1005  # a close frame without payload
    async with asyncio.timeout(2):
        await run.task
    assert run.agent.last_close_code == 1005 and run.agent.reconnects == 0
    assert not gateway.of_type("job_result")  # no NODE_UNAVAILABLE for the cut job
    assert all("status" not in f.msg for f in gateway.of_type("node_heartbeat"))
