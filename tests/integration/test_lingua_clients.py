"""The job path with nodes and clients that behave as lingua_1's real ones.

Nodes run our agent in its ``lingua`` profile (never ack, ignore ``node_control`` and
``error``, withhold a repeated text, reconnect once, say goodbye with 1005); sessions are fed
as lingua's web client feeds them (``two_way_auto``, Opus chunks every 256 ms, an empty final
chunk, no ``utterance_index``). What the web client would show as an alert (an ``error``
message) must never come for a single utterance.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lingua_node_agent import AgentConfig, NodeAgent
from tests.support.agents import ScriptedHandler, lingua_node, running
from tests.support.helpers import eventually, metric, node_pools, node_state
from tests.support.invariants import settle_idle
from tests.support.sessions import WebClient, session_url
from tests.support.stack import JOB_SERVICES, started_stack

pytestmark = pytest.mark.integration

LINGUA_ENV = {
    "LINGUA_ACK_TIMEOUT_MS": "1000",  # shorter than the slow job below: acks must not matter
    "LINGUA_JOB_DEADLINE_MS": "8000",
    "LINGUA_NO_NODE_WAIT_MS": "500",
    "LINGUA_MAX_ATTEMPTS": "3",
}


@pytest.fixture
def lingua_stack(redis, stack_env, tmp_path, request):
    # nodes on gw-a, web clients on gw-b
    with started_stack({**stack_env, **LINGUA_ENV}, tmp_path, request, JOB_SERVICES) as s:
        yield s


def redispatched(stack) -> float:
    return sum(
        metric(stack, d, "lingua_job_redispatch_total", reason=r)
        for d in ("disp-1", "disp-2")
        for r in ("ack_timeout", "deadline", "node_lost")
    )


async def test_a_job_slower_than_the_ack_lease_is_answered_once_after_one_assign(
    lingua_stack, redis
):
    """lingua's agent never acks: a 2.5 s job (the ack lease is 1 s) is answered once, by the
    node it was given to, and no other node sees it."""
    slow = ScriptedHandler(delay_s=2.5)
    spare = ScriptedHandler()
    nodes = [
        lingua_node(lingua_stack.gateway_url("gw-a"), "node-a-slow", slow),
        lingua_node(lingua_stack.gateway_url("gw-a"), "node-z-spare", spare),
    ]
    async with running(*nodes), WebClient(session_url(lingua_stack)) as client:
        await client.speak(1.0)
        await client.answered(0, timeout=10)
        _, answer = client.answer(0)
        assert answer["type"] == "translation_result", answer
        assert answer["text_asr"] == "utterance 0"
        await asyncio.sleep(1.5)  # past another ack lease: nothing more may come
        assert slow.calls == [0] and spare.calls == []
        assert [a.jobs.rejected for a in nodes] == [0, 0]  # no second job_assign
        assert len(client.of_type("translation_result")) == 1
        assert client.alerts == []
    assert redispatched(lingua_stack) == 0
    await settle_idle(redis, lingua_stack.keys)


@pytest.mark.parametrize("delivery", ["arrival", "ordered"])
async def test_a_withheld_result_does_not_hold_the_next_one(lingua_stack, redis, delivery):
    """The agent withholds utterance 1 (the same text as 0). Its answer to 2 finishes 1: the
    client gets missing_result (no_result) for 1 and the result of 2 at once, not after the
    job deadline (8 s), and 1 is never run again elsewhere."""
    texts = {0: "same words", 1: "same words", 2: "new words"}
    handler = ScriptedHandler(delay_s=0.3, texts=texts.__getitem__)
    spare = ScriptedHandler()
    node = lingua_node(lingua_stack.gateway_url("gw-a"), "node-a-withholds", handler)
    other = lingua_node(lingua_stack.gateway_url("gw-a"), "node-z-spare", spare)
    init = {"result_delivery": delivery}
    async with running(node, other), WebClient(session_url(lingua_stack), **init) as client:
        for _ in range(3):
            await client.speak(0.5)
        await client.answered(0, 1, 2, timeout=8)
        (t1, missing), (t2, result) = client.answer(1), client.answer(2)
        assert missing["type"] == "missing_result" and missing["reason"] == "no_result"
        assert result["type"] == "translation_result" and result["text_asr"] == "new words"
        assert node.jobs.withheld == 1
        # delivered as soon as the node answered 2: never held for 1's deadline
        assert max(t1, t2) - handler.finished[2] < 2.0, (t1, t2, handler.finished)
        assert handler.calls == [0, 1, 2] and spare.calls == []
        if delivery == "ordered":
            order = [m["utterance_index"] for _, m in client.messages if "utterance_index" in m]
            assert order == sorted(order)
        assert client.alerts == []
    assert redispatched(lingua_stack) == 0
    await settle_idle(redis, lingua_stack.keys)


async def test_a_node_whose_record_redis_lost_is_schedulable_again_without_a_reconnect(
    lingua_stack, redis
):
    """lingua's agent ignores node_control: the gateway registers it again itself from the
    registration it holds, within a heartbeat, without closing the node's only-once socket."""
    keys = lingua_stack.keys
    handler = ScriptedHandler()
    node = lingua_node(lingua_stack.gateway_url("gw-a"), "node-forgotten", handler)
    async with running(node):
        await eventually(lambda: node_pools(redis, keys, "node-forgotten"), what="pools")
        assert node.registrations == 1
        await redis.delete(keys.node("node-forgotten"))
        lost_at = time.monotonic()

        async def schedulable() -> bool:
            state = await node_state(redis, keys, "node-forgotten")
            return state.get("connected") == "1" and state.get("status") == "ready"

        await eventually(schedulable, timeout=10, what="the node registered again")
        back_after = time.monotonic() - lost_at
        assert back_after < 1.0 + 3.0, back_after  # a beat (1 s here) plus the round trips
        # the ack follows the Redis write by a round trip
        await eventually(lambda: _value(node.registrations == 2), what="the new ack")
        assert node.connections == 1 and node.registrations == 2  # no reconnect: a new ack
        async with WebClient(session_url(lingua_stack)) as client:
            await client.speak(0.5)
            await client.answered(0)
            assert client.answer(0)[1]["type"] == "translation_result"
            assert client.alerts == []
    await settle_idle(redis, keys)


@pytest.mark.parametrize("spare", [True, False])
async def test_a_node_killed_mid_job_fails_over_or_reports_the_utterance(
    lingua_stack, redis, spare
):
    """The node dies mid-job (no close frame). With another node the job runs there; without,
    the utterance gets missing_result + ui_event NODE_UNAVAILABLE saying the node was lost.
    Never an `error` message, and never "every node is busy"."""
    hang = ScriptedHandler(delay_s=3600)
    doomed = lingua_node(
        lingua_stack.gateway_url("gw-a"), "node-a-doomed", hang, reconnect_delay_s=600
    )
    fine = ScriptedHandler()
    others = [lingua_node(lingua_stack.gateway_url("gw-a"), "node-z-fine", fine)] if spare else []
    async with running(doomed, *others), WebClient(session_url(lingua_stack)) as client:
        await client.speak(0.5)
        await asyncio.wait_for(hang.started.wait(), 10)
        assert doomed._ws is not None
        doomed._ws.transport.abort()  # killed: no close frame
        await client.answered(0, timeout=10)
        _, answer = client.answer(0)
        if spare:
            assert answer["type"] == "translation_result", answer
            assert fine.calls == [0]
        else:
            assert (answer["type"], answer["reason"]) == ("missing_result", "error"), answer
            assert answer["error_code"] == "NODE_UNAVAILABLE"
            await client.wait_for(lambda c: c.of_type("ui_event"), timeout=5, what="ui_event")
            (event,) = client.of_type("ui_event")
            assert (event["event"], event["error_code"]) == ("ERROR", "NODE_UNAVAILABLE")
            assert "disconnected" in event["hint"] and "busy" not in event["hint"]
        assert client.alerts == []
    await settle_idle(redis, lingua_stack.keys)


async def test_silent_utterances_cost_no_job(lingua_stack, redis):
    handler = ScriptedHandler()
    async with running(lingua_node(lingua_stack.gateway_url("gw-a"), "node-quiet", handler)):
        async with WebClient(session_url(lingua_stack)) as client:
            await client.speak(0.5)
            await client.silence()
            await client.silence()
            await client.speak(0.5)
            await client.answered(0, 1, 2, 3)
            kinds = [
                (client.answer(i)[1]["type"], client.answer(i)[1].get("reason")) for i in range(4)
            ]
            assert kinds == [
                ("translation_result", None),
                ("missing_result", "silence"),
                ("missing_result", "silence"),
                ("translation_result", None),
            ]
            assert handler.calls == [0, 3]
            assert client.alerts == []


async def test_a_lingua_goodbye_1005_removes_the_node_at_once(lingua_stack, redis):
    keys = lingua_stack.keys
    node = lingua_node(lingua_stack.gateway_url("gw-a"), "node-leaving", ScriptedHandler())
    task = asyncio.create_task(node.run())
    await asyncio.wait_for(node.registered.wait(), 10)
    await eventually(lambda: node_pools(redis, keys, "node-leaving"), what="pools")
    node.stop()
    await asyncio.wait_for(task, 10)
    assert node.close_codes[-1] in (1005, None)

    async def gone() -> bool:
        return not await redis.exists(keys.node("node-leaving"))

    await eventually(gone, timeout=5, what="the node removed on its goodbye")
    assert (
        metric(
            lingua_stack,
            "gw-a",
            "lingua_gateway_closes_total",
            code="1005",
            endpoint="node",
            graceful="true",
        )
        == 1
    )


async def test_a_gateway_restart_is_survived_by_the_one_retry_agent(
    redis, stack_env, tmp_path, request
):
    """The new gateway process takes the port before the old one stops listening
    (SO_REUSEPORT), so the agent's only reconnect, a second after the old one's 1012, finds it
    accepting and registers again; a session then gets its result through it."""
    services = [("nm-1", "node-manager"), ("disp-1", "dispatcher"), ("gw-b", "gateway")]
    with started_stack({**stack_env, **LINGUA_ENV}, tmp_path, request, services) as s:
        old = s.start("gw-a", "gateway")
        await asyncio.to_thread(old.wait_ready)
        handler = ScriptedHandler()
        node = lingua_node(s.gateway_url("gw-a"), "node-survivor", handler)
        async with running(node):
            new = s.start("gw-a2", "gateway", port=old.port)
            await asyncio.to_thread(new.wait_ready, 30.0, True)  # its own socket, not the old
            assert await asyncio.to_thread(old.stop) == 0  # drains: 1012 to the node
            await eventually(
                lambda: _value(node.registrations == 2), timeout=10, what="registered again"
            )
            assert node.connections == 2 and 1012 in node.close_codes
            state = await node_state(redis, s.keys, "node-survivor")
            assert state["gateway_id"] == "gw-a2" and state["connected"] == "1"
            async with WebClient(session_url(s)) as client:
                await client.speak(0.5)
                await client.answered(0)
                assert client.answer(0)[1]["type"] == "translation_result"
                assert client.alerts == []


async def _value(v: object) -> object:
    return v


async def test_a_standard_agent_still_acks_and_keeps_its_lease(lingua_stack, redis):
    """Nodes that ack keep the ack lease: their jobs wait in `assigned` until the ack."""
    keys = lingua_stack.keys
    agent = NodeAgent(
        AgentConfig(
            gateway=lingua_stack.gateway_url("gw-a"),
            node_id="node-acker",
            lang_sets=[["en", "zh"]],
            heartbeat_interval_ms=200,
        ),
        ScriptedHandler(delay_s=0.5),
    )
    async with running(agent):
        assert (await node_state(redis, keys, "node-acker"))["acks"] == "1"
        async with WebClient(session_url(lingua_stack)) as client:
            await client.speak(0.5)
            await client.answered(0)
            assert client.answer(0)[1]["type"] == "translation_result"
    await settle_idle(redis, keys)
