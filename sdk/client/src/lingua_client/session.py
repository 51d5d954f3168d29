"""``ClientSession``: one open session — send utterances, read answers, close.

One background task reads the socket, so answers are timestamped when they *arrive*, not
when the caller gets round to iterating: latencies stay honest even if the caller sends
everything first and reads afterwards. A second task sends ``client_heartbeat`` (every 30 s
by default, as lingua's web client does) so the gateway keeps the session's record alive.
Sends are serialised by a lock, because two utterances interleaving their chunks would be
one garbled utterance to the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from lingua_client import frames
from lingua_client.config import BYTES_PER_MS, SessionConfig
from lingua_client.errors import (
    ClientError,
    ClientTimeout,
    ConnectionLost,
    ResultTimeout,
)
from lingua_client.events import SessionEvent, Undecodable, decode, error_index
from lingua_client.tracker import UtteranceTracker
from lingua_shared.protocol import CloseCode, ErrorMessage
from lingua_shared.protocol.session import (
    ClientAsrPartial,
    MissingResult,
    ServerHeartbeat,
    SessionCloseAck,
    SessionInitAck,
    TranslationResult,
    UiEvent,
)

log = logging.getLogger(__name__)
_END = object()  # queued when the connection ends


class ClientSession:
    """An open session (made by :func:`connect_session`): ``session_id``, ``ack``, ``config``,
    ``tracker`` (per-utterance records), ``session_errors`` (errors naming no utterance),
    ``server_heartbeats``, and ``lost`` (the :class:`ConnectionLost`, if the gateway went)."""

    def __init__(self, ws: ClientConnection, config: SessionConfig, ack: SessionInitAck) -> None:
        self.ws = ws
        self.config = config
        self.ack = ack
        self.session_id = ack.session_id
        self.tracker = UtteranceTracker()
        self.session_errors: list[ErrorMessage] = []
        self.server_heartbeats = 0
        self.lost: ConnectionLost | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._opened_at = self._loop.time()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._active_sends = 0
        self._seq = 0
        self._torn = False  # an utterance's chunks went out but not its final frame
        self._closing = False
        self._close_ack: asyncio.Future[SessionCloseAck] = self._loop.create_future()
        self._reader = asyncio.create_task(self._read_loop(), name="lingua-client-reader")
        self._beater = asyncio.create_task(self._heartbeat_loop(), name="lingua-client-heartbeat")

    # ----------------------------------------------------------------- sending

    async def send_utterance(
        self,
        pcm: bytes,
        *,
        binary: bool = False,
        whole: bool = False,
        realtime: bool | None = None,
        request_id: str | None = None,
    ) -> int:
        """Send one utterance of 16 kHz mono PCM16; returns the index the server gives it.

        Default: ``audio_chunk`` messages of ``chunk_ms`` each, then an empty final one.
        ``binary``: binary frames instead. ``whole``: one ``utterance`` message.
        ``realtime`` (default ``config.realtime``) paces chunks at the speed of the audio.
        """
        cfg = self.config
        if binary and whole:
            raise ClientError("choose binary frames or a whole utterance, not both")
        cfg.check_audio(len(pcm), whole)
        if self.closed or self._closing or self.lost is not None:
            raise self.lost or ClientError("the session is closed")
        self._active_sends += 1
        try:
            async with self._send_lock:
                if self._torn:
                    # the gateway holds the interrupted utterance's audio: what we sent next
                    # would be glued to it, under an index we no longer predict
                    raise ClientError("an earlier utterance was interrupted mid-send; open a "
                                      "new session")  # fmt: skip
                index = self.tracker.begin(len(pcm) / BYTES_PER_MS, self._loop.time())
                if whole:
                    await self._send(frames.whole_utterance(self.session_id, cfg, pcm, request_id))
                else:
                    chunks = frames.split_chunks(pcm, cfg.chunk_bytes)
                    out: Iterable[dict[str, Any] | bytes]
                    if binary:
                        clock = int((self._loop.time() - self._opened_at) * 1000)
                        out = frames.binary_chunks(self.session_id, chunks, self._seq, clock)
                    else:
                        out = frames.json_chunks(self.session_id, chunks, self._seq)
                    self._seq += len(chunks) + 1
                    self._torn = True
                    await self._send_paced(
                        out, chunks, cfg.realtime if realtime is None else realtime
                    )
                    self._torn = False
                self.tracker.finish(index, self._loop.time())
        finally:
            self._active_sends -= 1
        extra = {"session_id": self.session_id, "utterance_index": index, "bytes": len(pcm)}
        log.debug("utterance sent", extra=extra)
        return index

    async def _send_paced(
        self, out: Iterable[dict[str, Any] | bytes], chunks: list[bytes], realtime: bool
    ) -> None:
        start = self._loop.time()
        sent_ms = 0.0
        for i, frame in enumerate(out):
            if realtime and i < len(chunks):
                # a microphone delivers a chunk when its audio has been recorded
                sent_ms += len(chunks[i]) / BYTES_PER_MS
                await asyncio.sleep(max(0.0, start + sent_ms / 1000 - self._loop.time()))
            elif i:
                await asyncio.sleep(self.config.pace_ms / 1000)
            await self._send(frame)

    async def _send(self, msg: dict[str, Any] | bytes) -> None:
        data = msg if isinstance(msg, bytes) else json.dumps(msg, separators=(",", ":"))
        timeout = self.config.send_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.ws.send(data)
        except TimeoutError:
            raise ClientTimeout("send", timeout, "the gateway is not reading") from None
        except ConnectionClosed as exc:
            raise self.lost or ConnectionLost(exc.rcvd.code if exc.rcvd else None) from None

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            try:
                await self._send(frames.heartbeat(self.session_id))
            except ClientError:
                return  # the reader reports the loss

    # ----------------------------------------------------------------- receiving

    async def _read_loop(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    self._on_frame(raw)
                except Exception:  # a bug here must not stop the reading
                    log.exception("failed to handle a frame", extra={"session_id": self.session_id})
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self._closing:
                self.lost = ConnectionLost(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
                log.warning(str(self.lost), extra={"session_id": self.session_id})
            self._queue.put_nowait(_END)

    def _on_frame(self, raw: str | bytes) -> None:
        msg = decode(raw)
        now = self._loop.time()
        if isinstance(msg, Undecodable):
            log.warning(f"skipping a frame: {msg.reason}", extra={"detail": msg.detail})
            return
        if isinstance(msg, ServerHeartbeat):
            self.server_heartbeats += 1
            return
        if isinstance(msg, SessionCloseAck):
            if not self._close_ack.done():
                self._close_ack.set_result(msg)
            return
        if isinstance(msg, TranslationResult | MissingResult):
            index: int | None = msg.utterance_index
            latency = self.tracker.answer(msg.utterance_index, msg.type, now)
        elif isinstance(msg, ClientAsrPartial | UiEvent):
            # not answers: a partial, or the event that says why an utterance failed (its
            # missing_result is the answer)
            index = msg.utterance_index
            latency = self.tracker.latency_ms(index, now)
        elif isinstance(msg, ErrorMessage):
            index = error_index(msg)
            if index is None:
                self.session_errors.append(msg)
                latency = None
            else:
                latency = self.tracker.answer(index, msg.type, now)
        else:
            log.debug("ignoring a second session_init_ack")
            return
        log.debug("event", extra={"session_id": self.session_id, "type": msg.type,
                                  "utterance_index": index, "latency_ms": latency})  # fmt: skip
        self._queue.put_nowait(SessionEvent(msg, index, latency, now))

    async def events(
        self,
        *,
        until_answered: bool = False,
        expect: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[SessionEvent]:
        """Answers and partials in arrival order.

        ``until_answered``: stop once every utterance sent or being sent has its answer.
        ``expect=N``: stop once utterances 0..N-1 all have answers (for a reader that runs
        while another task is still sending). Otherwise it runs until the session closes.
        ``timeout_s`` bounds the whole iteration (:class:`ResultTimeout` names what is
        missing). A connection the gateway dropped raises :class:`ConnectionLost` once the
        events already received have been yielded.
        """
        deadline = None if timeout_s is None else self._loop.time() + timeout_s
        while True:
            if self._queue.empty() and self._done(until_answered, expect):
                return
            try:
                async with asyncio.timeout_at(deadline):
                    item = await self._queue.get()
            except TimeoutError:
                raise ResultTimeout(timeout_s or 0.0, self._waiting(expect)) from None
            if item is _END:
                self._queue.put_nowait(_END)  # a later iterator ends too
                if self.lost is not None:
                    raise self.lost
                return
            yield item

    def _done(self, until_answered: bool, expect: int | None) -> bool:
        if expect is not None:
            return not self._waiting(expect)
        if until_answered:
            return self._active_sends == 0 and self.tracker.all_answered()
        return False

    def _waiting(self, expect: int | None) -> list[int]:
        records = self.tracker.records
        if expect is None:
            return self.tracker.pending()
        return [i for i in range(expect) if i not in records or not records[i].answers]

    # ----------------------------------------------------------------- closing

    async def close(self, reason: str = "client done") -> None:
        """Send ``session_close`` and wait (``close_timeout_s``) for ``session_close_ack``.

        Raises :class:`ClientTimeout` when no ack came; the socket is closed either way.
        Events that arrived before the close can still be read with :meth:`events`.
        """
        if self.closed:
            return
        self._closing = True
        timeout = self.config.close_timeout_s
        try:
            if self.lost is None and not self._reader.done():
                await self._send(frames.session_close(self.session_id, reason))
                done, _ = await asyncio.wait({self._close_ack, self._reader}, timeout=timeout)
                if self._close_ack not in done:
                    if self._reader in done:
                        rcvd = self.ws.protocol.close_rcvd
                        raise ConnectionLost(rcvd.code if rcvd else None, "no session_close_ack")
                    raise ClientTimeout("session_close_ack", timeout)
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Close the socket without the handshake and stop the background tasks."""
        self._closing = True
        self.closed = True
        self._beater.cancel()
        await asyncio.gather(self._beater, return_exceptions=True)
        await self.ws.close(CloseCode.NORMAL, "session closed")
        try:
            async with asyncio.timeout(self.config.close_timeout_s):
                await self._reader
        except TimeoutError:  # pragma: no cover - ws.close() is bounded by close_timeout
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if not self._close_ack.done():
            self._close_ack.cancel()
