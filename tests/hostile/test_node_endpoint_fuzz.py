"""``/ws/node`` under hostile input: a real gateway and node-manager, real WebSocket frames.

Each example opens a connection, sometimes registers first, then sends a few frames drawn
from the wire models (valid, mistyped, huge, unknown types, not JSON, binary, over the size
limits, not UTF-8). Every frame is answered by a typed ``error`` or its normal reply, or
closes the connection with the code the protocol gives it; valid heartbeats and job messages
of the connection's own node are the only silent ones. Afterwards both services are alive,
healthy, and logged no exception and no error.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from lingua_gateway.decode import decode_frame
from lingua_shared.errors import InvalidMessage
from lingua_shared.protocol import NODE_INBOUND
from lingua_shared.protocol.node import NODE_ID_RE
from tests.hostile import strategies as hs
from tests.hostile.harness import (
    HARD_FRAME_LIMIT,
    Frame,
    Outcome,
    assert_services_sound,
    check_typed,
    exchange,
)

pytestmark = pytest.mark.integration
JOB_TYPES = frozenset({"job_ack", "job_started", "job_result", "asr_partial", "node_error"})
NODE_IDS = [f"fz-node-{i}" for i in range(4)]
SCHEDULER_SENDS = frozenset({"node_control"})  # a reregister request may come at any time


def job_messages(node_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """Well-typed job messages claiming this node, no node, or another one."""
    models = [m for m in hs.NODE_MODELS if hs.type_tag(m) in JOB_TYPES]
    claim = st.sampled_from([node_id, None, "fz-other-node"])
    return st.builds(
        lambda msg, who: {**msg, "node_id": who},
        hs.typed_messages(models),
        claim,
    )


def node_frames(node_id: str) -> st.SearchStrategy[Frame]:
    # one kind of input picked evenly (st.one_of favours its first branches)
    return st.sampled_from(
        [
            hs.text_frames(hs.NODE_MODELS, hs.NODE_TYPES).map(Frame),
            hs.valid_registers(node_id).map(hs.dumps).map(Frame),
            hs.registers_with_bad_extras(node_id).map(hs.dumps).map(Frame),
            job_messages(node_id).map(hs.dumps).map(Frame),
            hs.valid_heartbeats(node_id).map(hs.dumps).map(Frame),
            hs.hostile_heartbeats(node_id).map(hs.dumps).map(Frame),
            st.binary(max_size=64).map(lambda b: Frame(b, "binary")),
            hs.oversize_frames(HARD_FRAME_LIMIT // 2, HARD_FRAME_LIMIT).map(
                lambda o: Frame(o.frame(), "binary" if o.binary else "text")
            ),
            st.sampled_from([b"\xff\xfe", b'{"type": "\xc3\x28"}']).map(
                lambda b: Frame(b, "raw_text")
            ),
        ]
    ).flatmap(lambda kind: kind)


def expected_silence(frame: Frame, bound: str | None) -> bool:
    """May the gateway rightly say nothing? Only to a valid message that needs no reply."""
    if frame.kind != "text":
        return False
    try:
        msg: Any = decode_frame(frame.payload, NODE_INBOUND, hs.NODE_TYPES)
    except InvalidMessage:
        return False
    if msg.type == "error":
        return True
    if msg.type == "node_heartbeat":
        return msg.node_id == bound or (bound is None and bool(NODE_ID_RE.fullmatch(msg.node_id)))
    if msg.type in JOB_TYPES:
        return bound is not None and msg.node_id in (None, bound)
    return False


def judge(frame: Frame, out: Outcome, bound: str | None) -> str | None:
    """Check one outcome; returns the node id the connection is bound to afterwards."""
    size = len(frame.payload)
    if out.close_code is not None:
        if frame.kind == "raw_text":
            assert out.close_code == 1007, (frame, out)
        else:
            assert size > HARD_FRAME_LIMIT and out.close_code == 1009, (frame, out)
        return bound
    assert size <= HARD_FRAME_LIMIT and frame.kind != "raw_text", (frame, "not closed", out)
    check_typed(out, frame)
    assert not out.asynchronous, out
    if not out.replies:
        assert expected_silence(frame, bound), (frame, "no answer", bound)
        msg = json.loads(frame.payload)
        if bound is None and msg["type"] == "node_heartbeat":
            return str(msg["node_id"])  # a heartbeat binds a fresh connection (N6)
        return bound
    for reply in out.replies:
        assert isinstance(reply, dict) and reply.get("type") in ("error", "node_register_ack"), (
            frame,
            reply,
        )
        if reply["type"] == "node_register_ack":
            assert bound in (None, reply["node_id"]), (bound, reply)
            bound = reply["node_id"]
    return bound


def tally(seen: Counter[str], out: Outcome) -> None:
    if out.close_code is not None:
        seen[f"close {out.close_code}"] += 1
    for reply in out.replies:
        seen[reply.get("code") or reply.get("type")] += 1
    if not out.replies and out.close_code is None:
        seen["silent"] += 1


async def one_connection(url: str, data: st.DataObject, seen: Counter[str]) -> None:
    node_id = data.draw(st.sampled_from(NODE_IDS), label="node_id")
    bound: str | None = None
    async with connect(url, open_timeout=5, close_timeout=1) as ws:
        if data.draw(st.booleans(), label="register first"):
            frame = Frame(hs.dumps(data.draw(hs.valid_registers(node_id))))
            out = await exchange(ws, frame, SCHEDULER_SENDS)
            assert [r.get("type") for r in out.replies] == ["node_register_ack"], out
            bound = node_id
        for _ in range(data.draw(st.integers(1, 5), label="frames")):
            frame = data.draw(node_frames(node_id), label="frame")
            out = await exchange(ws, frame, SCHEDULER_SENDS)
            bound = judge(frame, out, bound)
            tally(seen, out)
            if out.close_code is not None:
                return


def test_node_endpoint_answers_every_hostile_frame(node_stack) -> None:
    url = node_stack.gateway_url("gw-a")
    loop = asyncio.new_event_loop()
    seen: Counter[str] = Counter()

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        loop.run_until_complete(one_connection(url, data, seen))

    try:
        example()
    finally:
        loop.close()
    print(f"/ws/node outcomes: {dict(seen.most_common())}")
    # the strategies reached every kind of outcome, not just the easy refusals
    for outcome in ("INVALID_MESSAGE", "INVALID_CAPABILITY_SCHEMA", "NODE_NOT_REGISTERED"):
        assert seen[outcome], (outcome, seen)
    assert seen["node_register_ack"] and seen["silent"], seen
    assert seen["close 1009"] and seen["close 1007"], seen
    assert_services_sound(node_stack)
