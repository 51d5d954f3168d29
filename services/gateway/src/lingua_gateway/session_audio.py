"""A session's utterances: numbering, cutting and publishing ``job.request`` (J1, J2, J9).

The server numbers utterances per session from 0, one per ``is_final`` or per server-side
cut; an ``utterance`` message may carry its own index (the counter then moves past it). A
finished utterance becomes one :class:`JobRequest` whose ``request_key`` (the client's
``request_id``, else ``<session_id>:<index>``) makes a retry or a redelivery create no
second job. A publish that fails is never silent: the utterance is answered as failed
(``missing_result`` and a ``ui_event`` with SCHEDULER_DEPENDENCY_DOWN); an utterance of digital
silence is answered ``missing_result`` reason ``silence``, without a job.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

from lingua_gateway.ports import SessionDeps
from lingua_gateway.session_spec import SessionSpec
from lingua_gateway.utterance import AUDIO_FORMATS, Cut, UtteranceAccumulator, is_silence
from lingua_shared.bus import BusOverloaded
from lingua_shared.errors import InvalidMessage, LinguaError, MessageTooLarge, UnsupportedFeature
from lingua_shared.events import JobRequest, ToSession
from lingua_shared.logs import get_logger
from lingua_shared.protocol import SAMPLE_RATE, ErrorCode, ErrorMessage
from lingua_shared.protocol.session import MissingResult, UiEvent, Utterance
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import ScriptCode

log = get_logger(__name__)
PIPELINE = {"use_asr": True, "use_nmt": True, "use_tts": True}
MAX_REQUEST_ID = 200  # request keys are at most 256 characters in Redis (job_create.lua)
MAX_REMEMBERED_REQUESTS = 10_000  # request ids remembered per connection for retries
MAX_INDEX = 2**31 - 1
CUT_WHOLE = "whole"  # an `utterance` message: the client cut it


class AudioOwner(Protocol):
    """What a session's audio needs of its connection."""

    conn_id: str
    draining: bool  # the gateway is stopping: no new utterance is taken

    def send_error(self, err: LinguaError | ErrorMessage) -> None: ...

    async def touch(self) -> None:
        """Refresh the session record's TTL (the dispatcher routes answers by it)."""

    def deliver(self, msg: ToSession) -> bool:
        """Send an answer in the session's delivery; False when the session is closing."""


class SessionAudio:
    def __init__(
        self,
        conn: AudioOwner,
        session_id: str,
        spec: SessionSpec,
        deps: SessionDeps,
        cell: str | None = None,
    ) -> None:
        s = deps.settings
        self.conn = conn
        self.settings = s
        self.metrics = deps.metrics
        self.publisher = deps.publisher
        # the session's cell (None: the default one): its jobs and answers live there
        self.cell = cell
        self.scripts = deps.scripts_in(cell) if cell and deps.scripts_in else deps.scripts
        self.session_id = session_id
        self.spec = spec
        self.next_index = 0
        self.request_index: dict[str, int] = {}  # request_id -> its utterance index
        self.acc = UtteranceAccumulator(
            spec.audio_format,
            spec.sample_rate,
            max_ms=s.max_utterance_ms,
            max_bytes=s.max_utterance_bytes,
            buffer_bytes=s.session_buffer_bytes,
        )

    def refused_while_draining(self) -> bool:
        """A draining gateway takes no new utterance: audio from now on is dropped, and the
        1012 that ends the session tells the client to send it again elsewhere."""
        if not self.conn.draining:
            return False
        self.metrics.audio_refused_draining.inc()
        return True

    def discard(self) -> int:
        return self.acc.discard()

    async def on_audio(self, data: bytes, final: bool) -> None:
        """One chunk (JSON ``audio_chunk`` or a binary frame); ``final`` ends the utterance."""
        m = self.metrics
        if self.refused_while_draining():
            return
        if data:
            added = self.acc.add(data)
            for cut in added.cuts:
                await self.publish_cut(cut)
            if added.overflow:
                limit = self.acc.buffer_bytes
                dropped = f"; this chunk ({added.dropped_bytes} bytes) was dropped"
                self.conn.send_error(
                    MessageTooLarge(
                        f"more than {limit} bytes of audio buffered on this connection: the "
                        f"utterance was cut{dropped if added.dropped_bytes else ''}",
                        {"limit": limit, "next_utterance_index": self.next_index},
                    )
                )
        if final:
            cut = self.acc.finish()
            if cut is None:
                # nothing to translate: no job, no index consumed (lingua's client ends every
                # utterance with an empty final chunk, sometimes with nothing before it)
                m.utterances_empty.inc()
                log.debug("gateway.empty_utterance", session_id=self.session_id)
                return
            await self.publish_cut(cut)

    async def publish_cut(self, cut: Cut) -> None:
        index = self.next_index
        self.next_index += 1
        m = self.metrics
        m.utterances.labels(cut.reason).inc()
        m.utterance_seconds.observe(cut.duration_ms / 1000)
        s = self.settings
        if s.skip_silence and is_silence(
            cut.audio, self.spec.audio_format, s.silence_opus_max_packet_bytes
        ):
            # lingua's web client sends a burst of one-chunk silent "utterances" after a
            # sentence: answered at once, without a job
            m.utterances_silent.inc()
            log.info(
                "gateway.utterance_silent",
                session_id=self.session_id,
                trace_id=self.spec.trace_id,
                utterance_index=index,
                audio_bytes=len(cut.audio),
            )
            await self.answer_without_job(index, "silence")
            return
        await self.publish(
            index,
            base64.b64encode(cut.audio).decode(),
            cut=cut.reason,
            nbytes=len(cut.audio),
        )

    async def on_utterance(self, msg: Utterance) -> None:
        """A whole utterance at once; its audio (base64) is forwarded as sent."""
        if self.refused_while_draining():
            return
        index = msg.utterance_index
        if index is not None and not 0 <= index <= MAX_INDEX:
            raise InvalidMessage(f"utterance_index must be 0..{MAX_INDEX}, got {index}")
        if msg.request_id is not None and not 0 < len(msg.request_id) <= MAX_REQUEST_ID:
            raise InvalidMessage(f"request_id must be 1..{MAX_REQUEST_ID} characters")
        fmt = (msg.audio_format or self.spec.audio_format).lower()
        if fmt not in AUDIO_FORMATS:
            raise UnsupportedFeature(
                f"unsupported audio_format {fmt[:40]!r}", {"supported": list(AUDIO_FORMATS)}
            )
        if msg.sample_rate is not None and msg.sample_rate != SAMPLE_RATE:
            raise UnsupportedFeature(f"sample_rate must be {SAMPLE_RATE}, got {msg.sample_rate}")
        try:
            raw = base64.b64decode(msg.audio, validate=True)
        except ValueError:
            raise InvalidMessage("audio is not valid base64; the utterance was dropped") from None
        if not raw:
            raise InvalidMessage("utterance has no audio", {"utterance_index": index})
        limit = self.settings.max_utterance_bytes
        if len(raw) > limit:
            raise MessageTooLarge(
                f"utterance of {len(raw)} bytes exceeds {limit} bytes",
                {"limit": limit, "utterance_index": index},
            )
        if index is None and msg.request_id is not None:
            # a retry of a request already numbered keeps its index: the dispatcher's
            # idempotency (J2) absorbs the copy and the utterance is answered once
            index = self.request_index.get(msg.request_id)
        if index is None:
            index = self.next_index
        if msg.request_id is not None and len(self.request_index) < MAX_REMEMBERED_REQUESTS:
            self.request_index.setdefault(msg.request_id, index)
        self.next_index = max(self.next_index, index + 1)
        self.metrics.utterances.labels(CUT_WHOLE).inc()
        await self.publish(
            index,
            msg.audio,
            cut=CUT_WHOLE,
            nbytes=len(raw),
            request_id=msg.request_id,
            audio_format=fmt,
        )

    async def publish(
        self,
        index: int,
        audio_b64: str,
        *,
        cut: str,
        nbytes: int,
        request_id: str | None = None,
        audio_format: str | None = None,
    ) -> None:
        spec, s = self.spec, self.settings
        await self.conn.touch()  # the dispatcher routes the answer by this record
        req = JobRequest(
            # a client's request id is namespaced by its session: one client's ids can never
            # suppress another's jobs
            request_key=(
                f"{self.session_id}:r:{request_id}" if request_id else f"{self.session_id}:{index}"
            ),
            session_id=self.session_id,
            utterance_index=index,
            gateway_id=s.instance_id,
            conn_id=self.conn.conn_id,
            mode=spec.mode,
            src_lang=spec.src_lang,
            tgt_lang=spec.tgt_lang,
            lang_a=spec.lang_a,
            lang_b=spec.lang_b,
            audio=audio_b64,
            audio_format=audio_format or spec.audio_format,
            sample_rate=spec.sample_rate,
            pipeline=dict(PIPELINE),
            trace_id=spec.trace_id,
            received_at_ms=now_ms(),
            tenant_id=spec.tenant_id,
            options=spec.options,
            cell=self.cell,
        )
        try:
            await self.publisher.event("job.request", req, batch=True)
        except Exception as exc:
            self.metrics.publish_failures.labels("job_request").inc()
            log.warning(
                "gateway.job_request_lost",
                session_id=self.session_id,
                trace_id=spec.trace_id,
                utterance_index=index,
                error=repr(exc),
            )
            why = (
                "the scheduler is overloaded: its work queue is full"
                if isinstance(exc, BusOverloaded)
                else "the scheduler's message bus is unavailable"
            )
            await self.answer_without_job(
                index,
                "error",
                error_code=ErrorCode.SCHEDULER_DEPENDENCY_DOWN,
                hint=f"utterance {index} could not be queued for translation ({why})",
            )
            return
        log.info(
            "gateway.utterance_published",
            session_id=self.session_id,
            trace_id=spec.trace_id,
            utterance_index=index,
            request_key=req.request_key,
            cut=cut,
            audio_bytes=nbytes,
        )

    async def answer_without_job(
        self,
        index: int,
        reason: str,
        *,
        error_code: ErrorCode | None = None,
        hint: str = "",
    ) -> None:
        """Answer an utterance that gets no job (silence, or its request could not be queued)
        with ``missing_result`` in its place in the session's delivery (``utterance_fail.lua``:
        exactly once per index, and an ordered session's later results are not held until the
        gap timeout). A failure also gets a ``ui_event`` ERROR, never an ``error`` message
        (lingua's web client alerts on those). If Redis cannot take the answer either, it goes
        to the client directly (an ordered session then gets it out of order, never silence)."""
        s = self.settings
        missing = MissingResult(
            session_id=self.session_id,
            utterance_index=index,
            reason=reason,
            created_at_ms=now_ms(),
            trace_id=self.spec.trace_id,
            error_code=str(error_code) if error_code else None,
        ).to_wire()
        if error_code is not None:
            self.metrics.errors_sent.labels("session", str(error_code)).inc()
            self.conn.deliver(
                ToSession(
                    session_id=self.session_id,
                    ordered=False,
                    utterance_index=index,
                    payload=UiEvent(
                        trace_id=self.spec.trace_id,
                        session_id=self.session_id,
                        utterance_index=index,
                        error_code=str(error_code),
                        hint=hint,
                    ).to_wire(),
                )
            )
        items: list[tuple[int, dict[str, Any]]] = [(index, missing)]
        try:
            delivery = await self.scripts.utterance_fail(
                session_id=self.session_id,
                utterance_index=index,
                now_ms=now_ms(),
                payload=missing,
                gap_ms=s.gap_timeout_ms,
                session_ttl_ms=int(s.session_ttl_s * 1000),
            )
            # the session record is gone: nothing to keep in order
            if delivery.code != ScriptCode.NO_SUCH_SESSION:
                items = delivery.items
        except Exception as exc:
            log.warning(
                "gateway.unqueued_answer_direct", session_id=self.session_id, error=repr(exc)
            )
        for i, item in items:
            self.conn.deliver(
                ToSession(
                    session_id=self.session_id,
                    conn_id=self.conn.conn_id,
                    utterance_index=i,
                    ordered=True,
                    payload=item,
                )
            )
