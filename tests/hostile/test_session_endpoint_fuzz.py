"""``/ws/session`` under hostile input: a real gateway, dispatcher and node-manager.

Each example opens a connection, sometimes starts a session first, then sends a few frames
drawn from the wire models and the binary frame format (valid, mistyped, huge, unknown
types, not JSON, truncated and forged binary frames, over the size limits, not UTF-8).
Every frame is answered (a typed ``error`` or its normal reply), or closes the connection
with its protocol close code; only a peer's ``error``, audio of the connection's own
session and a pong may be silent. Every utterance the gateway publishes is answered once
(no node runs, so by NO_AVAILABLE_NODE from the dispatcher). Afterwards the three services
run, answer /healthz and logged no exception and no error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from lingua_gateway.decode import decode_frame
from lingua_gateway.session_frames import parse_client_frame
from lingua_shared.errors import InvalidMessage
from lingua_shared.protocol.session import FRAME_PING, FRAME_PONG, SESSION_INBOUND
from tests.hostile import strategies as hs
from tests.hostile.harness import (
    HARD_FRAME_LIMIT,
    PROTOCOL_CODES,
    SESSION_FRAME_LIMIT,
    Frame,
    Outcome,
    assert_services_sound,
    check_typed,
    exchange,
    metric_total,
)

pytestmark = pytest.mark.integration
OTHER_SESSION = "s-00000000000000ff"
REPLY_TYPES = frozenset({"error", "session_init_ack", "server_heartbeat", "session_close_ack"})
ANSWER_TIMEOUT_S = 10.0
UTTERANCES = "lingua_gateway_utterances_total"
MAX_INDEX = 2**31 - 1
MAX_UTTERANCE_BYTES = 2_000_000


def session_frames(sid: str | None) -> st.SearchStrategy[Frame]:
    target = st.sampled_from([sid, sid, None, OTHER_SESSION])
    ping = hs.binary_frames(sid or "").filter(lambda b: b[:1] == bytes([FRAME_PING]))
    # one kind of input picked evenly (st.one_of favours its first branches)
    return st.sampled_from(
        [
            hs.text_frames(hs.SESSION_MODELS, hs.SESSION_TYPES).map(Frame),
            hs.valid_session_inits().map(hs.dumps).map(Frame),
            target.flatmap(hs.audio_chunks).map(hs.dumps).map(Frame),
            hs.audio_chunks(sid).map(hs.dumps).map(Frame),  # the session's own audio, more often
            target.flatmap(hs.utterances).map(hs.dumps).map(Frame),
            hs.utterances(sid).map(hs.dumps).map(Frame),
            ping.map(lambda b: Frame(b, "binary")),
            st.just(Frame(hs.dumps({"type": "client_heartbeat", "timestamp": 1}))),
            st.sampled_from([sid or "", OTHER_SESSION])
            .flatmap(hs.binary_frames)
            .map(lambda b: Frame(b, "binary")),
            hs.oversize_frames(SESSION_FRAME_LIMIT, HARD_FRAME_LIMIT).map(
                lambda o: Frame(o.frame(sid or ""), "binary" if o.binary else "text")
            ),
            st.sampled_from([b"\xff\xfe", b'{"type": "\xc3\x28"}']).map(
                lambda b: Frame(b, "raw_text")
            ),
        ]
    ).flatmap(lambda kind: kind)


def _b64(text: str | None) -> bytes | None:
    try:
        return base64.b64decode(text or "", validate=True)
    except (binascii.Error, ValueError):
        return None


def expected_silence(frame: Frame, sid: str | None) -> bool:
    """May the gateway rightly say nothing? Only to input that needs no reply."""
    if frame.kind == "binary":
        try:
            parsed = parse_client_frame(frame.payload)  # type: ignore[arg-type]
        except InvalidMessage:
            return False
        if parsed.frame_type == FRAME_PONG:
            return True
        return (
            parsed.frame_type != FRAME_PING and sid is not None and parsed.session_id in ("", sid)
        )
    try:
        msg: Any = decode_frame(frame.payload, SESSION_INBOUND, hs.SESSION_TYPES)
    except InvalidMessage:
        return False
    if msg.type == "error":
        return True
    if sid is None or getattr(msg, "session_id", None) not in (None, sid):
        return False
    if msg.type == "audio_chunk":
        return _b64(msg.payload) is not None
    if msg.type == "utterance":  # the gateway's checks, then the answer comes later
        raw = _b64(msg.audio)
        return (
            bool(raw)
            and len(raw or b"") <= MAX_UTTERANCE_BYTES
            and (msg.utterance_index is None or 0 <= msg.utterance_index <= MAX_INDEX)
            and (msg.request_id is None or 0 < len(msg.request_id) <= 200)
            and (msg.audio_format or "opus").lower() in ("opus", "pcm16")
            and msg.sample_rate in (None, 16000)
        )
    return False


def names_its_utterance(frame: Frame) -> bool:
    """An ``utterance`` with its own index or request id: a duplicate is absorbed (J2) and a
    jump waits for the gap timeout (J6), so answers cannot be counted one per publish."""
    if frame.kind != "text" or '"utterance"' not in frame.payload:
        return False
    try:
        msg = json.loads(frame.payload)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(msg, dict)
        and msg.get("type") == "utterance"
        and (msg.get("utterance_index") is not None or msg.get("request_id") is not None)
    )


def judge(frame: Frame, out: Outcome, sid: str | None) -> str | None:
    """Check one outcome; returns the connection's session id afterwards."""
    size = len(frame.payload)
    if out.close_code is not None:
        if frame.kind == "raw_text":
            assert out.close_code == 1007, (frame, out)
        elif size > HARD_FRAME_LIMIT:
            assert out.close_code == 1009, (frame, out)
        else:  # the client asked to close its session: acknowledged, then closed normally
            acks = [r for r in out.replies if isinstance(r, dict)]
            assert out.close_code == 1000, (frame, out)
            assert [r.get("type") for r in acks] == ["session_close_ack"], (frame, out)
            assert acks[0]["session_id"] == sid, (sid, out)
        return sid
    assert size <= HARD_FRAME_LIMIT and frame.kind != "raw_text", (frame, "not closed", out)
    check_typed(out, frame)
    if size > SESSION_FRAME_LIMIT:
        assert [e["code"] for e in out.errors] == ["MESSAGE_TOO_LARGE"], (frame, out)
        return sid
    if not out.replies:
        assert expected_silence(frame, sid), (frame, "no answer", sid)
        return sid
    for reply in out.replies:
        if isinstance(reply, bytes):
            pong = parse_client_frame(reply)
            assert pong.frame_type == FRAME_PONG and frame.kind == "binary", (frame, reply)
            continue
        assert reply.get("type") in REPLY_TYPES, (frame, reply)
        if reply["type"] == "session_init_ack":
            assert sid is None, (sid, reply)
            sid = reply["session_id"]
    return sid


async def collect_answers(
    ws: ClientConnection, answers: list[dict[str, Any]], expected: int
) -> None:
    """Wait (bounded) until every published utterance of the connection has its answer."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while sum(1 for a in answers if a["type"] != "ui_event") < expected:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{len(answers)} of {expected} utterances answered: {answers}"
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        except TimeoutError:
            raise AssertionError(
                f"{len(answers)} of {expected} utterances answered in {ANSWER_TIMEOUT_S}s: "
                f"{answers}"
            ) from None
        assert "utterance_index" in msg, msg  # nothing else is due now
        answers.append(msg)


def check_answers(answers: list[dict[str, Any]], expected: int) -> None:
    """Each utterance answered once (result or missing_result); a failed one also has its
    ui_event with a protocol code, never an `error` (an alert in lingua's web client)."""
    events = [a for a in answers if a["type"] == "ui_event"]
    answers = [a for a in answers if a["type"] != "ui_event"]
    indexes = [a["utterance_index"] for a in answers]
    assert len(indexes) == len(set(indexes)) == expected, answers
    for a in answers:
        assert a["type"] in ("translation_result", "missing_result"), a
        if a.get("reason") == "error":
            assert a["error_code"] in PROTOCOL_CODES, a
    for e in events:
        assert e["event"] == "ERROR" and e["error_code"] in PROTOCOL_CODES, e


def tally(seen: Counter[str], out: Outcome) -> None:
    if out.close_code is not None:
        seen[f"close {out.close_code}"] += 1
    for reply in out.replies:
        seen["pong" if isinstance(reply, bytes) else reply.get("code") or reply["type"]] += 1
    if not out.replies and out.close_code is None:
        seen["silent"] += 1


async def one_connection(gw: Any, data: st.DataObject, seen: Counter[str]) -> None:
    url = gw.base_url.replace("http://", "ws://") + "/ws/session"
    sid: str | None = None
    exact = True  # every published utterance is answered once, within the example
    answers: list[dict[str, Any]] = []
    before = metric_total(gw.base_url, UTTERANCES)
    async with connect(url, open_timeout=5, close_timeout=1, max_size=None) as ws:
        if data.draw(st.sampled_from([True, True, True, False]), label="session first"):
            frame = Frame(hs.dumps(data.draw(hs.valid_session_inits())))
            out = await exchange(ws, frame, frozenset())
            sid = judge(frame, out, sid)
            assert sid is not None, out
            tally(seen, out)  # the valid path counts too: the generated mix may lack an init
        for _ in range(data.draw(st.integers(1, 6), label="frames")):
            frame = data.draw(session_frames(sid), label="frame")
            out = await exchange(ws, frame, frozenset())
            sid = judge(frame, out, sid)
            answers.extend(out.asynchronous)
            tally(seen, out)
            exact = exact and not (names_its_utterance(frame) and not out.replies)
            if out.close_code is not None:
                return  # answers to a closed session are dropped by design
        published = int(metric_total(gw.base_url, UTTERANCES) - before)
        if not exact:
            # typed and never twice, however many
            check_answers(answers, sum(1 for a in answers if a["type"] != "ui_event"))
            return
        seen["utterances answered"] += published
        try:
            await collect_answers(ws, answers, published)
        except ConnectionClosed as exc:
            raise AssertionError(f"closed while answers were due: {exc!r}") from None
        check_answers(answers, published)


def test_session_endpoint_answers_every_hostile_frame(session_stack) -> None:
    gw = session_stack.procs["gw-a"]
    loop = asyncio.new_event_loop()
    seen: Counter[str] = Counter()

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        # a failure is reported as found: shrinking waits out timeouts for minutes
        phases=[Phase.explicit, Phase.generate],
    )
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        loop.run_until_complete(one_connection(gw, data, seen))

    try:
        example()
    finally:
        loop.close()
    print(f"/ws/session outcomes: {dict(seen.most_common())}")
    for outcome in ("INVALID_MESSAGE", "INVALID_SESSION", "MESSAGE_TOO_LARGE", "session_init_ack"):
        assert seen[outcome], (outcome, seen)
    assert seen["silent"] and seen["pong"] and seen["utterances answered"], seen
    assert seen["close 1009"] and seen["close 1007"], seen
    assert_services_sound(session_stack)
