"""Audio accumulation for one session: where an utterance ends (J1, J9).

Pure (no I/O) so that every cut rule is unit-tested without a socket. Audio is never decoded
or re-encoded (J9): PCM16 is cut on a sample boundary; Opus (lingua's web client) arrives as
a stream of ``[u16 little-endian length][packet]`` pairs, 20 ms per packet, and is cut only
between pairs, so both halves stay streams the node can decode. The length prefixes are
read to count packets; the bytes go out exactly as they came in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OPUS = "opus"
PCM16 = "pcm16"
AUDIO_FORMATS = (OPUS, PCM16)
OPUS_PACKET_MS = 20
_U16 = struct.Struct("<H")

# why an utterance ended (the ``cut`` label of ``lingua_gateway_utterances_total``)
CUT_FINAL = "final"
CUT_MAX_DURATION = "max_duration"
CUT_MAX_BYTES = "max_bytes"
CUT_BUFFER_FULL = "buffer_full"


@dataclass(frozen=True)
class Cut:
    """A finished utterance: its audio (untouched bytes) and why it ended."""

    audio: bytes
    reason: str
    duration_ms: int


@dataclass(frozen=True)
class Added:
    """What one chunk did: the utterances it completed, and whether it overflowed the buffer.

    ``overflow`` means the connection's buffer bound was hit: what was buffered was cut
    early (``buffer_full``) and, when the chunk alone exceeds the bound, the chunk dropped.
    """

    cuts: list[Cut]
    overflow: bool = False
    dropped_bytes: int = 0


class UtteranceAccumulator:
    """Collects one session's audio chunks and says where utterances end.

    An utterance ends on ``finish()`` (the client's ``is_final``), when it would exceed
    ``max_ms`` of audio or ``max_bytes``; the audio past a cut starts the next utterance.
    ``buffer_bytes`` bounds what one connection may hold at any time.
    """

    def __init__(
        self,
        audio_format: str,
        sample_rate: int,
        *,
        max_ms: int,
        max_bytes: int,
        buffer_bytes: int,
    ) -> None:
        if audio_format not in AUDIO_FORMATS:
            raise ValueError(f"unsupported audio format {audio_format!r}")
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self.max_ms = max(OPUS_PACKET_MS, max_ms)
        self.max_bytes = max(2, max_bytes)
        self.buffer_bytes = max(2, buffer_bytes)
        self._buf = bytearray()
        self._ends: list[int] = []  # Opus: offsets in _buf where a complete pair ends
        self._scan = 0  # Opus: offset of the next pair's length prefix

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def duration_ms(self) -> int:
        return self._duration(len(self._buf), len(self._ends))

    def _duration(self, nbytes: int, packets: int) -> int:
        if self.audio_format == OPUS:
            return packets * OPUS_PACKET_MS
        return nbytes * 1000 // (2 * self.sample_rate)

    def add(self, data: bytes) -> Added:
        """Append one chunk; returns the utterances the limits completed."""
        cuts: list[Cut] = []
        overflow = False
        if len(self._buf) + len(data) > self.buffer_bytes:
            overflow = True
            if self._buf:
                cuts.append(self._take(len(self._buf), CUT_BUFFER_FULL))
            if len(data) > self.buffer_bytes:
                return Added(cuts, overflow=True, dropped_bytes=len(data))
        self._buf += data
        if self.audio_format == OPUS:
            self._scan_pairs()
        while (cut := self._limit_cut()) is not None:
            cuts.append(cut)
        return Added(cuts, overflow=overflow)

    def finish(self) -> Cut | None:
        """End the utterance (``is_final``); ``None`` when there is no audio at all."""
        if not self._buf:
            return None
        return self._take(len(self._buf), CUT_FINAL)

    def discard(self) -> int:
        """Drop what is buffered (the connection ends); returns how many bytes."""
        n = len(self._buf)
        self._buf.clear()
        self._ends.clear()
        self._scan = 0
        return n

    # -- internals ------------------------------------------------------------------------
    def _scan_pairs(self) -> None:
        buf = self._buf
        while self._scan + _U16.size <= len(buf):
            (length,) = _U16.unpack_from(buf, self._scan)
            end = self._scan + _U16.size + length
            if end > len(buf):
                break
            self._ends.append(end)
            self._scan = end

    def _limit_cut(self) -> Cut | None:
        if self.audio_format == OPUS:
            max_packets = self.max_ms // OPUS_PACKET_MS
            if len(self._ends) > max_packets:
                return self._take(self._ends[max_packets - 1], CUT_MAX_DURATION)
            if len(self._buf) > self.max_bytes and self._ends:
                # the last pair boundary within the bound; a single pair larger than the
                # bound is still cut whole (a packet is never split)
                fits = [e for e in self._ends if e <= self.max_bytes]
                return self._take(fits[-1] if fits else self._ends[0], CUT_MAX_BYTES)
            return None
        samples_max = self.max_ms * self.sample_rate // 1000
        by_duration = max(2, samples_max * 2)
        by_bytes = self.max_bytes - self.max_bytes % 2
        limit = min(by_duration, by_bytes)
        if len(self._buf) > limit:
            return self._take(limit, CUT_MAX_DURATION if by_duration <= by_bytes else CUT_MAX_BYTES)
        return None

    def _take(self, n: int, reason: str) -> Cut:
        audio = bytes(self._buf[:n])
        packets = sum(1 for e in self._ends if e <= n)
        del self._buf[:n]
        if self.audio_format == OPUS:
            self._ends = [e - n for e in self._ends if e > n]
            self._scan = max(0, self._scan - n)
        return Cut(audio, reason, self._duration(n, packets))


def is_silence(audio: bytes, audio_format: str, opus_max_packet_bytes: int) -> bool:
    """Digital silence: an Opus stream whose every packet is at most ``opus_max_packet_bytes``
    long (an encoder spends a few bytes on a silent 20 ms frame, tens on speech), or PCM16 of
    zeros only. Such an utterance is answered without a job."""
    if not audio:
        return True
    if audio_format == PCM16:
        return audio.count(0) == len(audio)
    offset = 0
    while offset + _U16.size <= len(audio):
        (length,) = _U16.unpack_from(audio, offset)
        if length > opus_max_packet_bytes:
            return False
        offset += _U16.size + length
    return offset == len(audio)  # a truncated or malformed stream goes to a node as it is
