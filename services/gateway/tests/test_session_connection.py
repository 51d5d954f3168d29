"""The session endpoint's frame handling, without a network: binary frames round trip through
the same code the server runs, with a fake socket, bus and session store."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest

from lingua_gateway.metrics import Metrics
from lingua_gateway.ports import Connections, SessionDeps
from lingua_gateway.session_endpoint import SessionConnection
from lingua_shared.errors import DependencyDown, LinguaError
from lingua_shared.events import JobRequest, ToSession
from lingua_shared.protocol.session import (
    FRAME_AUDIO,
    FRAME_FINAL,
    FRAME_PING,
    FRAME_PONG,
    BinaryFrame,
    build_binary_frame,
    parse_binary_frame,
)
from lingua_shared.settings import Settings


class FakeWs:
    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.protocol = SimpleNamespace(close_rcvd=None, close_sent=None)

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.protocol.close_sent = SimpleNamespace(code=code, reason=reason)


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.fail = False

    async def event(self, routing_key: str, model: Any, **kw: Any) -> None:
        if self.fail:
            raise DependencyDown("broker unreachable")
        self.events.append((routing_key, model))


class FakeScripts:
    """Redis is not there: an answer without a job goes to the client directly."""

    async def utterance_fail(self, **kw: Any) -> Any:
        raise DependencyDown("redis unreachable")


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, str]] = {}
        self.unbound: list[str] = []
        self.acked: list[tuple[str, int]] = []  # answers written to the client

    async def create(
        self, session_id: str, fields: dict[str, str], cell: str | None = None
    ) -> None:
        self.records[session_id] = fields

    async def touch(self, session_id: str, fields: dict[str, str]) -> bool:
        return False

    async def unbind(self, session_id: str, conn_id: str) -> None:
        self.unbound.append(session_id)

    async def resume(
        self, session_id: str, conn_id: str, client: str, cell: str | None = None
    ) -> Any:
        raise DependencyDown("redis unreachable")

    def written(self, session_id: str, index: int) -> None:
        self.acked.append((session_id, index))


@pytest.fixture
async def conn() -> SessionConnection:
    settings = Settings(
        instance_id="gw-t",
        ws_session_max_frame_bytes=4096,
        result_reorder_timeout_s=10,
        skip_silence=False,  # the tiny Opus packets below would be digital silence
    )
    connections = Connections()
    deps = SessionDeps(
        settings=settings,
        metrics=Metrics(),
        publisher=FakePublisher(),
        store=FakeStore(),
        scripts=FakeScripts(),
        connections=connections,
    )
    c = SessionConnection(FakeWs(), None, deps)  # type: ignore[arg-type]
    # the fakes, as the tests reach them
    c.gw = SimpleNamespace(  # type: ignore[attr-defined]
        settings=settings,
        metrics=deps.metrics,
        infra=SimpleNamespace(publisher=deps.publisher),
        sessions=connections.sessions,
    )
    return c


async def out(c: SessionConnection) -> list[Any]:
    """What the connection sent so far (JSON decoded; binary frames parsed)."""
    for _ in range(20):
        await asyncio.sleep(0)
    ws: FakeWs = c.ws  # type: ignore[assignment]
    sent, ws.sent = ws.sent, []
    return [parse_binary_frame(f) if isinstance(f, bytes) else json.loads(f) for f in sent]


async def open_session(c: SessionConnection, **extra: Any) -> str:
    init = {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", **extra}
    await c.on_frame(json.dumps(init))
    (ack,) = await out(c)
    assert ack["type"] == "session_init_ack"
    return ack["session_id"]


def frame(ftype: int, sid: str, audio: bytes = b"", seq: int = 0, final: bool = False) -> bytes:
    return build_binary_frame(BinaryFrame(ftype, sid, seq, 1234, final, audio))


def requests(c: SessionConnection) -> list[JobRequest]:
    return [m for k, m in c.gw.infra.publisher.events if k == "job.request"]


async def test_binary_audio_and_final_frames_make_utterances_numbered_from_zero(conn):
    sid = await open_session(conn, audio_format="pcm16")
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x01\x00" * 100, seq=1))
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x02\x00" * 100, seq=2))
    await conn.on_frame(frame(FRAME_FINAL, sid, seq=3))
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x03\x00" * 50, seq=4, final=True))
    await conn.on_frame(frame(FRAME_FINAL, sid, seq=5))  # empty: no job, no index
    reqs = requests(conn)
    assert [r.utterance_index for r in reqs] == [0, 1]
    assert base64.b64decode(reqs[0].audio) == b"\x01\x00" * 100 + b"\x02\x00" * 100
    assert base64.b64decode(reqs[1].audio) == b"\x03\x00" * 50
    assert reqs[0].request_key == f"{sid}:0" and reqs[0].gateway_id == "gw-t"
    assert (reqs[0].audio_format, reqs[0].sample_rate) == ("pcm16", 16000)
    assert reqs[0].pipeline == {"use_asr": True, "use_nmt": True, "use_tts": True}
    assert await out(conn) == []
    assert conn.gw.metrics.utterances_empty._value.get() == 1


async def test_ping_is_answered_with_a_pong_before_and_after_session_init(conn):
    await conn.on_frame(frame(FRAME_PING, "", seq=7))
    (pong,) = await out(conn)
    assert (pong.frame_type, pong.seq, pong.timestamp) == (FRAME_PONG, 7, 1234)
    sid = await open_session(conn)
    await conn.on_frame(frame(FRAME_PING, sid, seq=8))
    (pong,) = await out(conn)
    assert (pong.frame_type, pong.session_id, pong.seq) == (FRAME_PONG, sid, 8)
    assert build_binary_frame(pong) == frame(FRAME_PONG, sid, seq=8)


async def test_bad_and_foreign_binary_frames_get_typed_errors(conn):
    with pytest.raises(LinguaError) as info:
        await conn.on_frame(frame(FRAME_AUDIO, "s-whatever", b"\x00\x00"))
    assert info.value.code == "INVALID_SESSION"  # no session yet
    sid = await open_session(conn)
    with pytest.raises(LinguaError) as info:
        await conn.on_frame(b"\x7f" + b"\x00" * 11)
    assert info.value.code == "INVALID_MESSAGE" and "unknown frame_type 0x7f" in info.value.message
    with pytest.raises(LinguaError) as info:
        await conn.on_frame(b"\x01\x05")
    assert info.value.code == "INVALID_MESSAGE" and "header" in info.value.message
    with pytest.raises(LinguaError) as info:
        await conn.on_frame(frame(FRAME_AUDIO, "s-0000000000000000", b"\x00\x00"))
    assert info.value.code == "INVALID_SESSION"
    with pytest.raises(LinguaError) as info:
        await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x00" * 5000))
    assert info.value.code == "MESSAGE_TOO_LARGE"
    assert requests(conn) == []


async def test_a_failed_publish_is_answered_as_a_failed_utterance_not_an_error(conn):
    """lingua's web client alerts on every ``error``: a failed utterance is a ui_event ERROR
    and its missing_result."""
    sid = await open_session(conn)
    conn.gw.infra.publisher.fail = True
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x02\x00\xaa\xbb", final=True))
    event, missing = await out(conn)
    assert (event["type"], event["event"], event["status"]) == ("ui_event", "ERROR", "error")
    assert event["error_code"] == "SCHEDULER_DEPENDENCY_DOWN"
    assert (event["utterance_index"], event["session_id"]) == (0, sid)
    assert "could not be queued" in event["hint"]
    assert (missing["type"], missing["utterance_index"], missing["reason"]) == (
        "missing_result",
        0,
        "error",
    )
    assert missing["error_code"] == "SCHEDULER_DEPENDENCY_DOWN"
    conn.gw.infra.publisher.fail = False
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x02\x00\xaa\xbb", final=True))
    assert [r.utterance_index for r in requests(conn)] == [1]


async def test_silent_utterances_cost_no_job(conn):
    conn.gw.settings.skip_silence = True
    sid = await open_session(conn)
    silent = b"".join(b"\x08\x00" + b"\xf8\xff\xfe" + b"\x00" * 5 for _ in range(13))
    speech = b"".join(b"\x40\x00" + bytes(range(64)) for _ in range(13))
    await conn.on_frame(frame(FRAME_AUDIO, sid, silent, final=True))
    await conn.on_frame(frame(FRAME_AUDIO, sid, speech, final=True))
    await conn.on_frame(frame(FRAME_AUDIO, sid, silent + speech, final=True))
    (missing,) = await out(conn)
    assert (missing["type"], missing["utterance_index"], missing["reason"]) == (
        "missing_result",
        0,
        "silence",
    )
    assert [r.utterance_index for r in requests(conn)] == [1, 2]  # speech is never silence


async def test_silence_of_pcm_is_all_zero(conn):
    conn.gw.settings.skip_silence = True
    sid = await open_session(conn, audio_format="pcm16")
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x00" * 3200, final=True))
    await conn.on_frame(frame(FRAME_AUDIO, sid, b"\x00" * 3198 + b"\x01\x00", final=True))
    (missing,) = await out(conn)
    assert missing["reason"] == "silence" and missing["utterance_index"] == 0
    assert [r.utterance_index for r in requests(conn)] == [1]


async def test_arrival_answers_leave_as_they_come_once_each(conn):
    sid = await open_session(conn)  # the default delivery: as lingua's scheduler
    for i in (2, 0, 0, 2, 1):
        payload = {"type": "translation_result", "session_id": sid, "utterance_index": i}
        conn.deliver(ToSession(session_id=sid, utterance_index=i, payload=payload))
    got = await out(conn)
    assert [m["utterance_index"] for m in got] == [2, 0, 1]
    assert conn.gw.metrics.session_dropped.labels("duplicate")._value.get() == 2


async def test_session_options_reach_the_job_request(conn):
    sid = await open_session(
        conn,
        mode="two_way_auto",
        src_lang="auto",
        lang_a="zh",
        lang_b="en",
        auto_langs=["zh", "en"],
        features={"speaker_identification": True},
        enable_streaming_asr=True,
        dialect=None,
        tenant_id="acme",
    )
    speech = b"".join(b"\x40\x00" + bytes(range(64)) for _ in range(13))
    await conn.on_frame(frame(FRAME_AUDIO, sid, speech, final=True))
    (req,) = requests(conn)
    assert req.options == {
        "auto_langs": ["zh", "en"],
        "features": {"speaker_identification": True},
        "enable_streaming_asr": True,
    }
    assert req.tenant_id == "acme"


async def test_ordered_answers_leave_in_index_order_once(conn):
    sid = await open_session(conn, result_delivery="ordered")
    for i in (2, 0, 0, 1):
        payload = {"type": "translation_result", "session_id": sid, "utterance_index": i}
        conn.deliver(ToSession(session_id=sid, utterance_index=i, payload=payload))
    partial = {"type": "asr_partial", "session_id": sid, "utterance_index": 5, "text": "x"}
    conn.deliver(ToSession(session_id=sid, utterance_index=5, ordered=False, payload=partial))
    got = await out(conn)
    assert [(m["type"], m["utterance_index"]) for m in got] == [
        ("translation_result", 0),
        ("translation_result", 1),
        ("translation_result", 2),
        ("asr_partial", 5),
    ]
    labels = conn.gw.metrics.session_dropped.labels("duplicate")._value.get()
    assert labels == 1


async def test_close_unbinds_the_session_and_forgets_it(conn):
    sid = await open_session(conn)
    conn.gw.sessions[sid] = conn
    await conn.on_frame(json.dumps({"type": "session_close", "session_id": sid}))
    (ack,) = await out(conn)
    assert ack == {"type": "session_close_ack", "session_id": sid}
    assert conn.ws.protocol.close_sent.code == 1000
    await conn.closed()
    assert conn.store.unbound == [sid] and sid not in conn.gw.sessions
    assert not conn.deliver(ToSession(session_id=sid, utterance_index=0, payload={}))


async def test_an_answer_leaves_the_outbox_only_once_written_and_a_copy_is_acked_again(conn):
    """Acknowledged (outbox_ack) when the socket took it, not when queued; a copy published
    again by the outbox is dropped and acknowledged again, so it is not published for ever."""
    sid = await open_session(conn, result_delivery="ordered")
    for i in (0, 1):
        payload = {"type": "translation_result", "session_id": sid, "utterance_index": i}
        conn.deliver(ToSession(session_id=sid, utterance_index=i, payload=payload))
    assert conn.store.acked == []  # queued, not written yet
    assert [m["utterance_index"] for m in await out(conn)] == [0, 1]
    assert conn.store.acked == [(sid, 0), (sid, 1)]
    conn.deliver(ToSession(session_id=sid, utterance_index=1, payload=payload))
    assert await out(conn) == []
    assert conn.store.acked == [(sid, 0), (sid, 1), (sid, 1)]
