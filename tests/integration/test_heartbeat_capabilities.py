"""Capabilities restated in heartbeats (lingua's agent sends them in every beat), against the
real gateway and node-manager: a beat that restates them unchanged only refreshes the node (the
gateway decodes just its other fields); one that changes them is read in full, whatever came
before: ASR or Semantic no longer ready degrades the node, ready again with other languages
re-pools it; a bad field in a beat that restates the same capabilities still gets its typed
error, and the connection stays open."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.helpers import eventually, node_pools, node_state, register_frame

pytestmark = pytest.mark.integration

READY = [{"type": "asr", "ready": True}, {"type": "semantic", "ready": True}]
NOT_READY = [{"type": "asr", "ready": True}, {"type": "semantic", "ready": False}]


def langs(*codes: str) -> dict[str, Any]:
    return {"asr_languages": list(codes), "semantic_languages": list(codes)}


def beat(node_id: str, by_type: list[dict[str, Any]], languages: dict[str, Any], **extra) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(
        {
            "type": "node_heartbeat",
            "node_id": node_id,
            "timestamp": 1,
            "resource_usage": {"cpu_percent": 10.0, "running_jobs": 0},
            "capability_by_type": by_type,
            "language_capabilities": languages,
            **extra,
        }
    )


async def test_restated_capabilities_refresh_change_degrade_and_bad_fields(stack, redis):
    keys = stack.keys
    node = "node-restates"
    caps = {"capability_by_type": READY, "language_capabilities": langs("en", "zh")}
    async with connect(stack.gateway_url()) as ws:
        await ws.send(register_frame(node, **caps))
        assert json.loads(await ws.recv())["type"] == "node_register_ack"
        assert await node_pools(redis, keys, node) == {"en_zh:eu:a100:0"}

        # the same capabilities again and again: the node is refreshed, nothing else
        first = int((await node_state(redis, keys, node))["last_heartbeat_ts"])
        for _ in range(3):
            await ws.send(beat(node, READY, langs("en", "zh")))
            await asyncio.sleep(0.15)

        async def refreshed() -> bool:
            return int((await node_state(redis, keys, node))["last_heartbeat_ts"]) > first

        await eventually(refreshed, what="a restating beat refreshed the node")
        assert (await node_state(redis, keys, node))["status"] == "ready"

        # Semantic not ready: degraded, and it stays so while beats repeat it
        for _ in range(3):
            await ws.send(beat(node, NOT_READY, langs("en", "zh")))
            await asyncio.sleep(0.15)

        async def status(want: str) -> bool:
            return (await node_state(redis, keys, node)).get("status") == want

        await eventually(lambda: status("degraded"), what="degraded")
        await asyncio.sleep(0.3)
        assert await status("degraded")

        # ready again, with another language: ready and re-pooled
        await ws.send(beat(node, READY, langs("en", "ja", "zh")))
        await eventually(lambda: status("ready"), what="ready again")

        async def repooled() -> bool:
            return await node_pools(redis, keys, node) == {"en_ja_zh:eu:a100:0"}

        await eventually(repooled, what="pools follow the new languages")

        # a bad field in a beat restating the same capabilities: a typed error, still open
        bad = json.loads(beat(node, READY, langs("en", "ja", "zh")))
        bad["resource_usage"]["cpu_percent"] = "busy"
        await ws.send(json.dumps(bad))
        err = json.loads(await ws.recv())
        assert (err["type"], err["code"]) == ("error", "INVALID_MESSAGE")
        assert "resource_usage" in err["message"], err
        await ws.send(beat(node, READY, langs("en", "ja", "zh"), status="sleeping"))
        err = json.loads(await ws.recv())
        assert err["code"] == "INVALID_MESSAGE" and "status" in err["message"], err
        await ws.send(beat(node, READY, langs("en", "ja", "zh")))
        await asyncio.sleep(0.3)
        assert await status("ready")
        assert await node_pools(redis, keys, node) == {"en_ja_zh:eu:a100:0"}
