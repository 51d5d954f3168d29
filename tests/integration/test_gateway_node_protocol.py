"""/ws/node against the real gateway + node-manager processes: every kind of bad input gets a
typed error or a close code, nothing half-written; a valid registration lands in Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.helpers import (
    eventually,
    lingua_keys,
    node_pools,
    node_state,
    register_frame,
)

pytestmark = pytest.mark.integration


async def recv_json(ws) -> dict:
    return json.loads(await ws.recv())


async def test_bad_frames_get_typed_errors_and_the_connection_stays_open(stack, redis):
    async with connect(stack.gateway_url()) as ws:
        cases = [
            ("{not json", "malformed JSON"),
            ("[1, 2]", "must be a JSON object"),
            ('{"no_type": 1}', "needs a string field 'type'"),
            ('{"type": "teleport"}', "unknown message type 'teleport'"),
            ('{"type": "node_heartbeat", "node_id": 42}', "node_id"),
            ('{"type": "node_register", "max_concurrent_jobs": "many"}', "max_concurrent_jobs"),
        ]
        for frame, fragment in cases:
            await ws.send(frame)
            err = await recv_json(ws)
            assert err["type"] == "error" and err["code"] == "INVALID_MESSAGE", (frame, err)
            assert fragment in err["message"], (frame, err)
        await ws.send(b"\x00\x01binary")
        err = await recv_json(ws)
        assert err["code"] == "INVALID_MESSAGE" and "binary" in err["message"]
        # still open and useful after all of that
        await ws.send(register_frame("node-after-errors"))
        ack = await recv_json(ws)
        assert ack == {**ack, "type": "node_register_ack", "node_id": "node-after-errors"}
    await eventually(lambda: _gone(redis, stack.keys, "node-after-errors"), what="graceful removal")


async def _gone(redis, keys, node_id):
    return not await redis.exists(keys.node(node_id)) and not await node_pools(redis, keys, node_id)


async def test_n1_rejection_names_what_is_missing_and_writes_nothing(stack, redis):
    async with connect(stack.gateway_url()) as ws:
        await ws.send(
            register_frame(
                "node-no-semantic",
                capability_by_type=[
                    {"type": "asr", "ready": True},
                    {"type": "semantic", "ready": False, "reason": "model loading"},
                ],
                language_capabilities={"asr_languages": ["en", "zh"], "semantic_languages": []},
            )
        )
        err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == "INVALID_CAPABILITY_SCHEMA"
        assert "Semantic" in err["message"] and "ASR" not in err["message"].split("missing:")[1]
        assert len(err["details"]["missing"]) == 2 and err["details"]["waiting"] is True
        # held, not refused: lingua's agent heartbeats only once it has an ack
        ack = await recv_json(ws)
        assert (ack["type"], ack["node_id"], ack["status"]) == (
            "node_register_ack",
            "node-no-semantic",
            "registering",
        )
        assert "Semantic" in ack["message"]
        await ws.send(json.dumps({"type": "node_heartbeat", "node_id": "x" * 65}))
        err = await recv_json(ws)
        assert err["code"] == "INVALID_MESSAGE"
        # a beat that still shows Semantic loading changes nothing
        await ws.send(json.dumps({"type": "node_heartbeat", "node_id": "node-no-semantic"}))
        await asyncio.sleep(0.3)
        assert await lingua_keys(redis, stack.keys) == []


async def test_a_node_held_at_registration_gets_in_once_a_heartbeat_shows_it_ready(stack, redis):
    """A node whose services are still starting (lingua's agent registers at once) is held;
    the first heartbeat with ASR and Semantic ready registers it, as the issue asks."""
    keys = stack.keys
    loading = {
        "capability_by_type": [
            {"type": "asr", "ready": True},
            {"type": "semantic", "ready": False, "reason": "model loading"},
        ],
        "language_capabilities": {"asr_languages": ["en", "zh"], "semantic_languages": []},
    }
    async with connect(stack.gateway_url()) as ws:
        await ws.send(register_frame("node-starting", **loading))
        assert (await recv_json(ws))["code"] == "INVALID_CAPABILITY_SCHEMA"
        assert (await recv_json(ws))["status"] == "registering"
        await ws.send(json.dumps({"type": "node_heartbeat", "node_id": "node-starting", **loading}))
        ready = {
            "capability_by_type": [
                {"type": "asr", "ready": True},
                {"type": "semantic", "ready": True},
            ],
            "language_capabilities": {
                "asr_languages": ["en", "zh"],
                "semantic_languages": ["en", "zh"],
            },
        }
        await ws.send(json.dumps({"type": "node_heartbeat", "node_id": "node-starting", **ready}))
        ack = await recv_json(ws)
        assert (ack["type"], ack["status"]) == ("node_register_ack", "ready")
        assert await node_pools(redis, keys, "node-starting") == {"en_zh:eu:a100:0"}
        assert (await node_state(redis, keys, "node-starting"))["status"] == "ready"


async def test_oversize_frame_is_closed_with_1009(stack, redis):
    async with connect(stack.gateway_url(), max_size=None) as ws:
        await ws.send("x" * 70_000)  # LINGUA_WS_MAX_FRAME_BYTES=65536 in the stack
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_registration_assigns_an_id_and_records_the_gateway(stack, redis):
    keys = stack.keys
    async with connect(stack.gateway_url()) as ws:
        await ws.send(register_frame(None, unknown_future_field={"a": 1}))
        ack = await recv_json(ws)
        assert ack["type"] == "node_register_ack" and ack["status"] == "ready"
        node_id = ack["node_id"]
        assert node_id.startswith("node-")
        state = await node_state(redis, keys, node_id)
        assert state["gateway_id"] == "gw-a" and state["connected"] == "1"
        assert json.loads(state["lang_sets"]) == [["en", "ja", "zh"]]
        assert await node_pools(redis, keys, node_id) == {"en_ja_zh:eu:a100:0"}
        # superset matching: the en/ja/zh pool covers zh -> en
        assert await redis.smembers(keys.pair("zh", "en")) == {b"en_ja_zh:eu:a100:0"}
        # one connection is one node
        await ws.send(register_frame("someone-else"))
        err = await recv_json(ws)
        assert err["code"] == "NODE_ID_CONFLICT"
