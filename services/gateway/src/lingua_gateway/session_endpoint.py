"""``/ws/session``: one client connection, one session, from ``session_init`` to close (J1).

The gateway numbers a session's utterances from 0 (lingua's web client never sends an
index), cuts them (``is_final``, or the duration / size bounds), and publishes one
``job.request`` per utterance with its audio untouched (J9). Answers come back through
:meth:`deliver`, each index once, as they arrive or in index order (the session's delivery).
A client that lost its connection may resume its session on any replica (``session_init``
with ``resume_session_id``): what it was owed comes again, what it already has does not.
A recoverable error is a typed ``error`` and the connection stays open; the connection ends
with ``session_close`` (1000), a slow reader (4008), a drain (1012), or a close code a refused
frame carries (docs/protocol.md lists them).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

from lingua_gateway.access import ByteRate
from lingua_gateway.decode import decode_frame
from lingua_gateway.delivery import ArrivalSender, OrderedSender
from lingua_gateway.outbound import Outbound
from lingua_gateway.ports import SessionDeps
from lingua_gateway.read_loop import EndpointConnection, read_frames
from lingua_gateway.session_audio import SessionAudio
from lingua_gateway.session_frames import (
    check_frame_size,
    decode_base64,
    parse_client_frame,
    pong_for,
)
from lingua_gateway.session_resume import check_resume, plan_resume, spec_from_record
from lingua_gateway.session_spec import ARRIVAL, SessionSpec, check_region, spec_from_init
from lingua_shared.auth import Principal
from lingua_shared.errors import DependencyDown, InvalidMessage, InvalidSession, ScriptRejected
from lingua_shared.events import ToSession
from lingua_shared.keys import selection_pair
from lingua_shared.logs import get_logger
from lingua_shared.protocol import GRACEFUL_SESSION_CLOSES, CloseCode, ErrorMessage
from lingua_shared.protocol.session import (
    FRAME_AUDIO,
    FRAME_FINAL,
    FRAME_PING,
    FRAME_PONG,
    SESSION_INBOUND,
    SESSION_INBOUND_TYPES,
    AudioChunk,
    ClientHeartbeat,
    ServerHeartbeat,
    SessionClose,
    SessionCloseAck,
    SessionInit,
    SessionInitAck,
    Utterance,
)
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import ScriptCode

log = get_logger(__name__)
ENDPOINT = "session"
SESSION_TYPES = SESSION_INBOUND_TYPES  # what a client may send


_NONE = type(None)
# the fields of ``AudioChunk`` and the exact types a valid value of each has in JSON
_CHUNK_FIELDS: dict[str, tuple[type, ...]] = {
    "type": (str,),
    "session_id": (str, _NONE),
    "seq": (int, _NONE),
    "is_final": (bool,),
    "payload": (str, _NONE),
    "client_timestamp_ms": (int, _NONE),
}


def plain_audio_chunk(raw: str | bytes) -> dict[str, Any] | None:
    """An ``audio_chunk`` text frame as its JSON object when every field it has is one of
    :class:`AudioChunk`'s with a value the model takes as it is (so the model would add
    nothing); ``None`` for anything else, which then goes through :func:`decode_frame` and
    gets its typed error there."""
    if not isinstance(raw, str) or '"audio_chunk"' not in raw:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.get("type") != "audio_chunk":
        return None
    for key, value in obj.items():
        types = _CHUNK_FIELDS.get(key)
        if types is None or type(value) not in types:
            return None
    return obj


class SessionConnection(EndpointConnection):
    ENDPOINT = ENDPOINT

    def __init__(
        self, ws: ServerConnection, principal: Principal | None, deps: SessionDeps
    ) -> None:
        s = deps.settings
        self.ws = ws
        self.principal = principal  # the client token's holder; None when auth is off
        self.deps = deps  # handed on to the session's audio
        self.settings = s
        self.metrics = deps.metrics
        self.store = deps.store
        self.sessions = deps.connections.sessions
        self.conn_id = uuid.uuid4().hex
        self.session_id: str | None = None
        self.cell: str | None = None  # the session's cell (None: the default one)
        self.spec: SessionSpec | None = None
        self.audio: SessionAudio | None = None
        self.sender: ArrivalSender | OrderedSender | None = None
        self.touched_at = -1e9  # loop time of the last TTL refresh of the session record
        self.closing = False
        self.draining = False  # the gateway is stopping: no new utterance is taken
        self.out = Outbound(
            ws,
            s.ws_outbound_queue,
            s.ws_send_timeout_s,
            on_slow=lambda: deps.metrics.outbound_dropped.labels(ENDPOINT).inc(),
        )

    def log_context(self) -> dict[str, Any]:
        return {"conn_id": self.conn_id, "session_id": self.session_id}

    async def run(self) -> None:
        s = self.settings
        try:
            await read_frames(
                self, self.metrics, ByteRate(s.ws_session_bytes_per_s, s.ws_rate_burst_s)
            )
        finally:
            await self.closed()

    # -- frames ---------------------------------------------------------------------------
    async def on_frame(self, raw: str | bytes) -> None:
        check_frame_size(raw, self.settings.ws_session_max_frame_bytes)
        if isinstance(raw, bytes):
            await self.on_binary(raw)
            return
        chunk = plain_audio_chunk(raw)
        if chunk is not None:
            # the web client's every frame: handled without building a model (a frame this
            # cannot vouch for goes through the full validation below)
            self.metrics.message_in(ENDPOINT, "audio_chunk").inc()
            audio = self.require_session(chunk.get("session_id"))
            payload = chunk.get("payload")
            data = decode_base64(payload, "payload") if payload else b""
            await audio.on_audio(data, chunk.get("is_final", False))
            return
        msg = decode_frame(raw, SESSION_INBOUND, SESSION_TYPES)
        self.metrics.message_in(ENDPOINT, msg.type).inc()
        if isinstance(msg, SessionInit):
            await self.on_init(msg)
        elif isinstance(msg, ClientHeartbeat):
            await self.on_heartbeat(msg)
        elif isinstance(msg, ErrorMessage):
            log.info(
                "gateway.client_reported_error",
                session_id=self.session_id,
                code=msg.code[:64],
                error=msg.message[:200],
            )
        elif isinstance(msg, AudioChunk):
            audio = self.require_session(msg.session_id)
            data = decode_base64(msg.payload, "payload") if msg.payload else b""
            await audio.on_audio(data, msg.is_final)
        elif isinstance(msg, Utterance):
            await self.require_session(msg.session_id).on_utterance(msg)
        elif isinstance(msg, SessionClose):
            self.require_session(msg.session_id)
            await self.on_close_request(msg)

    async def on_binary(self, data: bytes) -> None:
        frame = parse_client_frame(data)
        kind = {FRAME_AUDIO: "bin_audio", FRAME_FINAL: "bin_final", FRAME_PING: "bin_ping"}
        self.metrics.messages_in.labels(ENDPOINT, kind.get(frame.frame_type, "bin_pong")).inc()
        if frame.frame_type == FRAME_PONG:
            return  # we never ping with binary frames; nothing to answer
        if frame.frame_type == FRAME_PING:
            if self.session_id is not None:
                self.require_session(frame.session_id or None)
            self.out.send_frame(pong_for(frame))
            return
        audio = self.require_session(frame.session_id or None)
        await audio.on_audio(frame.audio, frame.is_final)

    def require_session(self, named: str | None) -> SessionAudio:
        """The connection's session; a client only ever touches its own (INVALID_SESSION)."""
        if self.audio is None or self.session_id is None:
            raise InvalidSession("no session on this connection: send session_init first")
        if named is not None and named != self.session_id:
            raise InvalidSession(
                "this connection holds another session; a client only touches its own",
                {"session_id": named[:64]},
            )
        return self.audio

    # -- messages -------------------------------------------------------------------------
    async def on_init(self, msg: SessionInit) -> None:
        if self.session_id is not None:
            raise InvalidMessage(
                "this connection already holds a session (one session per connection)",
                {"session_id": self.session_id},
            )
        region = check_region(msg.region)
        if msg.resume_session_id is not None:
            await self.on_resume(msg.resume_session_id, msg.resume_received, region)
            return
        s = self.settings
        spec = spec_from_init(msg, s.result_delivery)
        home = cell = self.deps.cells.default
        if self.deps.placement is not None:  # DependencyDown -> typed error
            pair = selection_pair(spec.mode, spec.src_lang, spec.tgt_lang, spec.lang_a, spec.lang_b)
            home, cell = await self.deps.placement.place(region, pair)
        session_id = f"s-{uuid.uuid4().hex[:16]}"
        record = self.record(spec, next_deliver=0)
        await self.store.create(session_id, record, cell)  # DependencyDown -> typed error
        self.touched_at = asyncio.get_running_loop().time()
        self.start(session_id, spec, cell)
        self.metrics.sessions.inc()
        log.info(
            "gateway.session_opened",
            session_id=session_id,
            conn_id=self.conn_id,
            trace_id=spec.trace_id,
            mode=spec.mode,
            src_lang=spec.src_lang,
            tgt_lang=spec.tgt_lang,
            lang_a=spec.lang_a,
            lang_b=spec.lang_b,
            audio_format=spec.audio_format,
            cell=cell,
            home_cell=home,
        )
        self.out.send(
            SessionInitAck(
                session_id=session_id,
                trace_id=spec.trace_id,
                use_binary_frame=False,
                negotiated_codec=spec.audio_format,
                negotiated_audio_format=spec.audio_format,
                negotiated_sample_rate=spec.sample_rate,
            ).to_wire()
        )

    def start(self, session_id: str, spec: SessionSpec, cell: str) -> None:
        """The session is this connection's: its delivery, its audio, its routing entry."""
        s = self.settings
        self.cell = self.deps.cells.tag(cell)
        store = self.store

        def written(index: int) -> None:
            store.written(session_id, index)

        self.session_id, self.spec = session_id, spec
        # an answer lost on its way waits in the outbox until it is published again: wait for
        # that rather than skip its index
        reorder_s = max(s.result_reorder_timeout_s, s.outbox_retry_ms / 1000 + 1.0)
        self.sender = (
            ArrivalSender(self.out, self.metrics, session_id, spec.trace_id, written)
            if spec.delivery == ARRIVAL
            else OrderedSender(
                self.out, reorder_s, self.metrics, session_id, spec.trace_id, written
            )
        )
        self.audio = SessionAudio(self, session_id, spec, self.deps, self.cell)
        self.sessions[session_id] = self

    async def on_resume(
        self, session_id: str, received: list[int] | None, region: str | None = None
    ) -> None:
        """Take up an existing session: bind it here, then send what it is owed (its outbox,
        less what the client says it has), in its delivery. The session is looked for in
        its region's cell first, then in the cells that cell falls back to, then in the
        rest."""
        have = check_resume(session_id, received)
        client = self.principal.subject if self.principal else ""
        cells = self.deps.cells
        home = self.deps.placement.home(region) if self.deps.placement else cells.default
        order = [*cells.ladder(home), *(c for c in cells.names if c not in cells.ladder(home))]
        try:
            for cell in order:
                b = await self.store.resume(session_id, self.conn_id, client, cell)
                if b.code != ScriptCode.NO_SUCH_SESSION:
                    break
        except ScriptRejected as exc:
            raise InvalidSession("resume_session_id is not a session id") from exc
        if b.code == ScriptCode.FOREIGN_SESSION:
            raise InvalidSession("that session was opened by another client")
        if b.code != ScriptCode.RESUMED:
            raise InvalidSession(
                "no such session to resume (it expired or was never opened): open a new one",
                {"session_id": session_id[:64]},
            )
        spec = spec_from_record(b.record)
        plan = plan_resume(b.record, b.sent, b.outbox, have)
        self.touched_at = asyncio.get_running_loop().time()
        self.start(session_id, spec, cell)
        assert self.sender is not None and self.audio is not None
        self.sender.resume(plan.next_index, plan.answered)
        self.audio.next_index = max(self.audio.next_index, plan.next_utterance)
        self.metrics.sessions.inc()
        log.info(
            "gateway.session_resumed",
            session_id=session_id,
            conn_id=self.conn_id,
            old_gateway_id=b.old_gateway_id,
            old_conn_id=b.old_conn_id,
            replayed=len(plan.send),
            already_received=len(plan.already),
            next_utterance_index=plan.next_utterance,
        )
        self.out.send(
            SessionInitAck(
                session_id=session_id,
                message="session resumed",
                trace_id=spec.trace_id or None,
                use_binary_frame=False,
                negotiated_codec=spec.audio_format,
                negotiated_audio_format=spec.audio_format,
                negotiated_sample_rate=spec.sample_rate,
                resumed=True,
                next_utterance_index=plan.next_utterance,
            ).to_wire()
        )
        for index in plan.already:
            self.store.written(session_id, index)
        for index, payload in plan.send:
            if isinstance(self.sender, OrderedSender) and self.sender.next_index < index:
                self.sender.resume(index)  # what lies between was written before
            self.sender.deliver(
                ToSession(session_id=session_id, conn_id=self.conn_id, utterance_index=index,
                          payload=payload)
            )  # fmt: skip

    def record(self, spec: SessionSpec, next_deliver: int) -> dict[str, str]:
        return {
            "gateway_id": self.settings.instance_id,
            "conn_id": self.conn_id,
            **spec.record(),
            # kept for a resume on another connection
            "trace_id": spec.trace_id,
            "options": json.dumps(spec.options, separators=(",", ":")),
            "created_at_ms": str(now_ms()),
            "next_deliver": str(next_deliver),
            # who opened it (audit); the session itself is bound to this connection
            "client": self.principal.subject if self.principal else "",
        }

    async def touch(self) -> None:
        """Refresh the record's TTL (restoring it if gone); a Redis outage is only logged.

        At most once per ``session_touch_interval_s`` (30 s against a 600 s TTL): a round trip
        to Redis ahead of every utterance would sit on the dispatch path for nothing (lingua's
        web client ends an utterance every 4-6 s)."""
        if self.session_id is None or self.spec is None or self.sender is None:
            return
        now = asyncio.get_running_loop().time()
        if now - self.touched_at < self.settings.session_touch_interval_s:
            return
        self.touched_at = now
        try:
            restored = await self.store.touch(
                self.session_id, self.record(self.spec, self.sender.next_index)
            )
        except DependencyDown as exc:
            self.metrics.session_store_errors.labels("touch").inc()
            log.warning("gateway.session_touch_failed", session_id=self.session_id, error=str(exc))
            return
        if restored:
            self.metrics.session_store_errors.labels("restore").inc()
            log.warning("gateway.session_record_restored", session_id=self.session_id)

    async def on_heartbeat(self, msg: ClientHeartbeat) -> None:
        if self.session_id is not None:
            self.require_session(msg.session_id)
            await self.touch()
        self.out.send(
            ServerHeartbeat(session_id=self.session_id or "", timestamp=now_ms()).to_wire()
        )

    async def on_close_request(self, msg: SessionClose) -> None:
        assert self.session_id is not None
        log.info("gateway.session_close_requested", session_id=self.session_id, reason=msg.reason)
        self.closing = True
        self.out.send(SessionCloseAck(session_id=self.session_id, reason=msg.reason).to_wire())
        await self.out.flush_and_stop(1.0)
        await self.ws.close(CloseCode.NORMAL, "session closed")

    # -- answers from the dispatcher -----------------------------------------------------
    def deliver(self, msg: ToSession) -> bool:
        """Send (in order) what the dispatcher addressed to this session; False if closing."""
        if self.closing or self.sender is None:
            return False
        self.sender.deliver(msg)
        return True

    # -- drain ----------------------------------------------------------------------------
    def owed(self) -> int:
        """Utterances published but not yet answered to the client."""
        if self.audio is None or self.sender is None:
            return 0
        return max(0, self.audio.next_index - self.sender.answered)

    async def drain(self, deadline: float, close_code: int) -> None:
        """Take no new utterance, wait (until ``deadline``, loop time) for the answers to
        those already published, then close with ``close_code``. An utterance whose end
        arrives from now on gets no index and no answer: the close tells the client that
        what is unanswered was not taken and must be sent again to another replica."""
        self.draining = True
        loop = asyncio.get_running_loop()
        while not self.closing and self.owed() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.closing:
            return
        owed = self.owed()
        (log.warning if owed else log.info)(
            "gateway.session_drained",
            session_id=self.session_id,
            conn_id=self.conn_id,
            unanswered=owed,
        )
        self.closing = True
        await self.out.flush_and_stop(1.0)
        await self.ws.close(close_code, "gateway restarting; reconnect")

    # -- end ------------------------------------------------------------------------------
    async def closed(self) -> None:
        self.closing = True
        await self.out.flush_and_stop(0.2)
        proto = self.ws.protocol
        rcvd, sent = proto.close_rcvd, proto.close_sent
        code = int(
            rcvd.code
            if rcvd is not None
            else (sent.code if sent is not None else CloseCode.ABNORMAL)
        )
        graceful = code in GRACEFUL_SESSION_CLOSES
        self.metrics.closes.labels(ENDPOINT, str(code), str(graceful).lower()).inc()
        if self.session_id is None:
            return
        if self.sender is not None:
            self.sender.close()
        discarded = self.audio.discard() if self.audio is not None else 0
        if self.sessions.get(self.session_id) is self:
            del self.sessions[self.session_id]
        self.metrics.sessions.dec()
        log.info(
            "gateway.session_closed",
            session_id=self.session_id,
            conn_id=self.conn_id,
            trace_id=self.spec.trace_id if self.spec else None,
            close_code=code,
            discarded_bytes=discarded,
        )
        try:
            await self.store.unbind(self.session_id, self.conn_id)
        except DependencyDown as exc:
            # the TTL ends the record anyway; until then answers reach a gateway that drops them
            self.metrics.session_store_errors.labels("unbind").inc()
            log.warning("gateway.session_unbind_failed", session_id=self.session_id, error=str(exc))
