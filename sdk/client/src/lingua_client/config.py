"""Session settings: one dataclass, checked before anything is sent.

The gateway refuses a bad ``session_init`` with a typed error, but only after a connection;
checking here turns the common mistakes (a one-way session without languages, a two-way one
with a single language, a chunk larger than the gateway's frame limit) into a
:class:`ConfigError` at once, with the fix in the message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from lingua_client.errors import AudioError, ConfigError
from lingua_shared.protocol import MAX_UTTERANCE_MS, SAMPLE_RATE, SESSION_MAX_FRAME_BYTES

DEFAULT_URL = "ws://127.0.0.1:5010/ws/session"
ONE_WAY = "one_way"
TWO_WAY = "two_way_auto"
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono: 32 bytes per millisecond
# The gateway's defaults (lingua_shared.protocol.codes): it cuts a longer utterance on its own,
# which would give it an index the client does not expect, and refuses a larger frame.
GATEWAY_MAX_UTTERANCE_MS = MAX_UTTERANCE_MS
GATEWAY_MAX_FRAME_BYTES = SESSION_MAX_FRAME_BYTES


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lingua-client")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@dataclass
class SessionConfig:
    """What one session asks for, and how the client paces and bounds itself.

    Use :meth:`one_way` or :meth:`two_way` for the languages; every other field has a
    working default. Times are seconds unless the name says ``_ms``.
    """

    mode: str = ONE_WAY
    src_lang: str | None = "en"
    tgt_lang: str | None = "zh"
    lang_a: str | None = None
    lang_b: str | None = None
    trace_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    audio_format: str = "pcm16"
    chunk_ms: int = 100  # audio per audio_chunk / binary frame
    pace_ms: float = 5.0  # pause between chunks when not pacing at real time
    realtime: bool = False  # pace chunks at the speed of the audio, like a microphone
    heartbeat_interval_s: float = 30.0
    open_timeout_s: float = 10.0  # TCP + WebSocket handshake
    init_timeout_s: float = 10.0  # session_init -> session_init_ack
    send_timeout_s: float = 10.0  # one frame onto a congested socket
    close_timeout_s: float = 5.0  # session_close -> session_close_ack
    max_utterance_ms: int = GATEWAY_MAX_UTTERANCE_MS
    max_frame_bytes: int = GATEWAY_MAX_FRAME_BYTES
    client_version: str = field(default_factory=_client_version)
    platform: str = "python"
    # Client token (JWT) sent as ``Authorization: Bearer`` when the gateway requires auth.
    token: str | None = field(default=None, repr=False)

    @classmethod
    def one_way(cls, src_lang: str, tgt_lang: str, **kw: object) -> SessionConfig:
        return cls(mode=ONE_WAY, src_lang=src_lang, tgt_lang=tgt_lang, **kw)  # type: ignore[arg-type]

    @classmethod
    def two_way(cls, lang_a: str, lang_b: str, **kw: object) -> SessionConfig:
        """Two-way: the source is detected per utterance (``src_lang`` is ``auto``)."""
        return cls(mode=TWO_WAY, src_lang="auto", tgt_lang=lang_b, lang_a=lang_a, lang_b=lang_b,
                   **kw)  # type: ignore[arg-type]  # fmt: skip

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_ms * BYTES_PER_MS

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting that cannot work."""
        if self.mode == ONE_WAY:
            if not self.src_lang or not self.tgt_lang or self.src_lang == "auto":
                raise ConfigError("a one_way session needs src_lang and tgt_lang (e.g. en, zh)")
            if self.src_lang == self.tgt_lang:
                raise ConfigError(f"src_lang and tgt_lang are both {self.src_lang!r}")
        elif self.mode == TWO_WAY:
            if not self.lang_a or not self.lang_b or self.lang_a == self.lang_b:
                raise ConfigError("a two_way_auto session needs two languages, e.g. en,zh")
        else:
            raise ConfigError(f"mode must be {ONE_WAY!r} or {TWO_WAY!r}, got {self.mode!r}")
        if self.audio_format != "pcm16":
            raise ConfigError("this client sends PCM16 only (audio_format 'pcm16')")
        if not 10 <= self.chunk_ms <= 2000:
            raise ConfigError(f"chunk_ms must be 10..2000, got {self.chunk_ms}")
        # base64 grows 4/3, plus the JSON envelope: a chunk must fit one gateway frame
        if self.chunk_bytes * 4 // 3 + 512 > self.max_frame_bytes:
            raise ConfigError(
                f"chunk_ms={self.chunk_ms} makes frames over {self.max_frame_bytes} B"
            )
        if self.pace_ms < 0:
            raise ConfigError("pace_ms must be >= 0")
        if self.max_utterance_ms < self.chunk_ms:
            raise ConfigError("max_utterance_ms must be at least chunk_ms")
        for name in ("heartbeat_interval_s", "open_timeout_s", "init_timeout_s",
                     "send_timeout_s", "close_timeout_s"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if not 0 < len(self.trace_id) <= 128:
            raise ConfigError("trace_id must be 1..128 characters")

    def check_audio(self, nbytes: int, whole: bool = False) -> None:
        """Refuse (:class:`AudioError`) PCM16 the gateway would not number as one utterance."""
        if not nbytes or nbytes % 2:
            # an empty utterance gets no index from the gateway: our count would drift
            raise AudioError(f"an utterance needs PCM16 audio (an even, non-zero number of "
                             f"bytes), got {nbytes} bytes")  # fmt: skip
        ms = nbytes / BYTES_PER_MS
        if ms > self.max_utterance_ms:
            raise AudioError(f"utterance of {ms:.0f} ms exceeds max_utterance_ms="
                             f"{self.max_utterance_ms}; split it (the gateway would cut it and "
                             "number the pieces itself)")  # fmt: skip
        if whole and nbytes * 4 // 3 + 1024 > self.max_frame_bytes:
            raise AudioError(f"a whole utterance of {nbytes} bytes does not fit one "
                             f"{self.max_frame_bytes}-byte frame; send it in chunks")  # fmt: skip
