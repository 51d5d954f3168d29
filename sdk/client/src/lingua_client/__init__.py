"""Lingua client SDK: stream speech to the Lingua scheduler's gateway (``/ws/session``).

``async with connect_session(url, SessionConfig.one_way("en", "zh")) as s:`` opens a
session; ``await s.send_utterance(pcm)`` sends one utterance of 16 kHz mono PCM16 (chunked,
binary, or whole) and returns the index the server gives it; ``async for ev in
s.events(until_answered=True)`` yields each :class:`SessionEvent` (translation, partial,
missing, error) with its utterance index and latency. :mod:`lingua_client.audio` reads WAV
files and splits them at pauses.
"""

from lingua_client.audio import (
    Segment,
    VadSettings,
    demo_wav,
    read_wav,
    split_utterances,
    whole_file,
    write_wav,
)
from lingua_client.config import DEFAULT_URL, SessionConfig
from lingua_client.connect import connect_session, open_session
from lingua_client.errors import (
    AudioError,
    ClientError,
    ClientTimeout,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ResultTimeout,
    SessionRejected,
)
from lingua_client.events import SessionEvent
from lingua_client.report import Summary, summarize
from lingua_client.session import ClientSession
from lingua_client.tracker import UtteranceRecord, UtteranceTracker

__all__ = [
    "DEFAULT_URL",
    "AudioError",
    "ClientError",
    "ClientSession",
    "ClientTimeout",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "ResultTimeout",
    "Segment",
    "SessionConfig",
    "SessionEvent",
    "SessionRejected",
    "Summary",
    "UtteranceRecord",
    "UtteranceTracker",
    "VadSettings",
    "connect_session",
    "demo_wav",
    "open_session",
    "read_wav",
    "split_utterances",
    "summarize",
    "whole_file",
    "write_wav",
]
