"""Registration, heartbeats, re-registration and reconnects against the fake gateway."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest

from lingua_node_agent import AgentConfig, NodeAgent, RegistrationRejected
from lingua_shared.protocol import NodeHeartbeat, NodeRegister, derive_capabilities


async def test_register_payload_is_valid_and_carries_our_fields(gateway, start_agent):
    run = start_agent(region="eu", gpu_tier="a100", lang_sets=[["en", "zh"], ["en", "ja", "zh"]],
                      tts_langs=["en"], capacity=3, heartbeat_interval_ms=250)  # fmt: skip
    frame = await gateway.nth("node_register")
    msg = frame.msg
    assert "node_id" not in msg  # none configured: the scheduler assigns one
    caps = derive_capabilities(NodeRegister.model_validate(msg))
    assert caps.region == "eu" and caps.gpu_tier == "a100" and caps.capacity == 3
    assert caps.lang_sets == [["en", "ja", "zh"], ["en", "zh"]]
    assert caps.heartbeat_interval_ms == 250
    assert msg["acks_jobs"] is True and caps.acks_jobs  # the standard profile acks each job
    assert set(caps.services) == {"asr", "semantic", "tts"}
    assert msg["capability_schema_version"] == "2.0"
    assert {"type": "asr", "ready": True}.items() <= msg["capability_by_type"][0].items()
    assert msg["language_capabilities"]["asr_languages"] == ["en", "ja", "zh"]
    assert msg["language_capabilities"]["tts_languages"] == ["en"]
    assert msg["hardware"]["cpu_cores"] >= 1 and msg["version"] and msg["platform"]
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    assert run.agent.node_id == "gw-1" and run.agent.status == "ready"


async def test_heartbeats_follow_the_ack_interval_with_the_acked_id(gateway, start_agent):
    gateway.ack_interval_ms = 100  # the gateway's value wins over the configured 1000
    run = start_agent(heartbeat_interval_ms=1000)
    await gateway.nth("node_heartbeat", 6)
    register = (await gateway.nth("node_register")).at
    beats = gateway.of_type("node_heartbeat")
    assert beats[0].at - register < 0.5, "first heartbeat must follow the ack at once"
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats[:6])]
    mean = sum(gaps) / len(gaps)
    assert 0.07 <= mean <= 0.2, gaps
    for beat in beats:
        hb = NodeHeartbeat.model_validate(beat.msg)
        assert hb.node_id == "gw-1"
        assert hb.timestamp is not None and abs(hb.timestamp / 1000 - time.time()) < 30
        usage = hb.resource_usage
        assert usage is not None and usage.running_jobs == 0
        assert usage.cpu_percent is not None and 0 <= usage.mem_percent <= 100
        assert "status" not in beat.msg
    assert run.agent.heartbeats_sent >= 6


async def test_reregister_keeps_the_node_id_and_the_heartbeats(gateway, start_agent):
    run = start_agent()
    await gateway.nth("node_heartbeat", 2)
    await gateway.send({"type": "node_control", "command": "reregister", "reason": "redis lost"})
    second = await gateway.nth("node_register", 2)
    assert second.conn == 0 and second.msg["node_id"] == "gw-1"
    seen = len(gateway.of_type("node_heartbeat"))
    await gateway.nth("node_heartbeat", seen + 2)
    await gateway.wait_for(lambda: run.agent.registrations == 2)
    assert run.agent.connections == 1 and run.agent.reconnects == 0
    assert {f.msg["node_id"] for f in gateway.of_type("node_heartbeat")} == {"gw-1"}


async def test_abrupt_drop_reconnects_and_registers_with_the_same_id(gateway, start_agent):
    run = start_agent()
    await gateway.nth("node_heartbeat")
    gateway.conns[0].transport.abort()  # no close frame: a network failure
    again = await gateway.nth("node_register", 2)
    assert again.conn == 1 and again.msg["node_id"] == "gw-1"
    assert gateway.close_codes[0] is None
    await gateway.nth("node_heartbeat", conn=1)
    assert run.agent.reconnects == 1 and run.agent.connections == 2
    assert run.agent.registered.is_set() and run.agent.node_id == "gw-1"


async def test_service_restart_close_reconnects_promptly(gateway, start_agent):
    run = start_agent(node_id="node-a")
    first = await gateway.nth("node_heartbeat")
    await gateway.conns[0].close(1012, "service restart")
    again = await gateway.nth("node_register", 2)
    assert again.msg["node_id"] == "node-a"
    assert again.at - first.at < 1.0  # backoff after a registered session starts at <= 0.25 s
    assert run.agent.last_close_code == 1012


async def test_retryable_error_closes_abnormally_and_retries(gateway, start_agent):
    def reply(msg, conn):
        if conn == 0:
            return {"type": "error", "code": "SCHEDULER_DEPENDENCY_DOWN", "message": "redis"}
        return gateway.default_reply(msg, conn)

    gateway.register_reply = reply
    run = start_agent(node_id="node-b")
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    # Not 1000/1001: a graceful close would make the scheduler drop the node's state.
    assert await gateway.closed(0) == 4000
    assert run.agent.reconnects == 1 and run.agent.node_id == "node-b"


async def test_invalid_capability_schema_stops_the_agent(gateway):
    gateway.register_reply = lambda msg, conn: {
        "type": "error",
        "code": "INVALID_CAPABILITY_SCHEMA",
        "message": "no semantic service",
    }
    agent = NodeAgent(AgentConfig(gateway=gateway.url))
    with pytest.raises(RegistrationRejected) as info:
        async with asyncio.timeout(3):
            await agent.run()
    assert info.value.code == "INVALID_CAPABILITY_SCHEMA"
    assert "no semantic service" in str(info.value)
    assert agent.connections == 1 and agent.reconnects == 0 and agent.stopped.is_set()
    assert await gateway.closed(0) == 1000


async def test_a_held_registration_keeps_the_agent_beating_until_it_is_acked_ready(
    gateway, start_agent
):
    """The gateway holds a node whose services are not ready yet: the typed error says
    `waiting`, an ack with status `registering` follows; the agent keeps its connection and
    heartbeats, and is registered when the gateway acks it `ready`."""

    def held(msg: dict, conn: int) -> None:
        return None

    gateway.register_reply = held
    run = start_agent(heartbeat_interval_ms=100)
    register = await gateway.nth("node_register")
    node_id = register.msg.get("node_id") or "gw-held"
    await gateway.send(
        {
            "type": "error",
            "code": "INVALID_CAPABILITY_SCHEMA",
            "message": "node rejected, missing: a ready Semantic service",
            "details": {"missing": ["a ready Semantic service"], "waiting": True},
        }
    )
    await gateway.send(
        {"type": "node_register_ack", "node_id": node_id, "status": "registering", "message": "x"}
    )
    await gateway.nth("node_heartbeat", 2, node_id=node_id)
    assert not run.agent.registered.is_set() and run.agent.connections == 1
    await gateway.send({"type": "node_register_ack", "node_id": node_id, "status": "ready"})
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    assert run.agent.registrations == 1 and run.agent.connections == 1


async def test_register_timeout_reconnects(gateway, start_agent):
    gateway.register_reply = lambda msg, conn: (
        None if conn == 0 else gateway.default_reply(msg, conn)
    )
    run = start_agent(register_timeout_s=0.3)
    async with asyncio.timeout(3):
        await run.agent.registered.wait()
    assert await gateway.closed(0) == 4000 and run.agent.connections == 2


async def test_unknown_and_malformed_frames_are_ignored(gateway, start_agent):
    run = start_agent()
    await gateway.nth("node_heartbeat")
    await gateway.send({"type": "from_the_future", "x": 1})
    await gateway.send("not json at all")
    await gateway.send(b"\x01\x02")
    await gateway.send({"type": "node_control"})  # invalid: no command
    await gateway.send({"type": "node_control", "command": "dance"})
    count = len(gateway.of_type("node_heartbeat"))
    await gateway.nth("node_heartbeat", count + 2)
    assert run.agent.connections == 1 and run.agent.registered.is_set()


async def test_state_file_keeps_the_assigned_id_across_restarts(gateway, start_agent, tmp_path):
    state = tmp_path / "state" / "node.json"
    first = start_agent(state_file=state)
    async with asyncio.timeout(3):
        await first.agent.registered.wait()
    assert json.loads(state.read_text())["node_id"] == "gw-1"
    first.agent.stop(drain=False)
    await first.task
    second = start_agent(state_file=state)
    frame = await gateway.nth("node_register", 2)
    assert frame.msg["node_id"] == "gw-1"
    assert second.agent.node_id == "gw-1"
