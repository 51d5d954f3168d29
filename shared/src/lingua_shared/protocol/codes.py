"""Codes and constants both ends of the wire share (docs/protocol.md): error codes, WebSocket
close codes, node statuses, service types, and the limits a client must know."""

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Error codes carried by ``error`` messages (SCREAMING_SNAKE_CASE, docs/protocol.md)."""

    INVALID_MESSAGE = "INVALID_MESSAGE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    INVALID_SESSION = "INVALID_SESSION"
    SESSION_CLOSED = "SESSION_CLOSED"
    NODE_UNAVAILABLE = "NODE_UNAVAILABLE"
    NODE_OVERLOADED = "NODE_OVERLOADED"
    MODEL_NOT_AVAILABLE = "MODEL_NOT_AVAILABLE"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    UNSUPPORTED_FEATURE = "UNSUPPORTED_FEATURE"
    NO_AVAILABLE_NODE = "NO_AVAILABLE_NODE"
    WS_DISCONNECTED = "WS_DISCONNECTED"
    NMT_TIMEOUT = "NMT_TIMEOUT"
    TTS_TIMEOUT = "TTS_TIMEOUT"
    JOB_TIMEOUT = "JOB_TIMEOUT"
    NODE_ID_CONFLICT = "NODE_ID_CONFLICT"
    INVALID_CAPABILITY_SCHEMA = "INVALID_CAPABILITY_SCHEMA"
    SCHEDULER_DEPENDENCY_DOWN = "SCHEDULER_DEPENDENCY_DOWN"
    # what lingua's node agent answers in a failed job_result: any processing failure, and
    # its refusal of a repeated job ("DUPLICATE_JOB_ID: ..." / "DUPLICATE_UTTERANCE_INDEX: ..."
    # at the start of the message)
    PROCESSING_ERROR = "PROCESSING_ERROR"
    # ours
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    NODE_NOT_REGISTERED = "NODE_NOT_REGISTERED"
    DUPLICATE_JOB_ID = "DUPLICATE_JOB_ID"
    DUPLICATE_UTTERANCE_INDEX = "DUPLICATE_UTTERANCE_INDEX"


class CloseCode(IntEnum):
    """WebSocket close codes, as the gateway, the services and the SDKs use them
    (docs/protocol.md §5)."""

    NORMAL = 1000  # a clean goodbye (a node's: the scheduler forgets it at once)
    GOING_AWAY = 1001  # a clean goodbye too: the peer is going away
    NO_STATUS = 1005  # a close frame without a code; lingua's agent says goodbye this way
    ABNORMAL = 1006  # no close frame at all: the connection dropped
    INVALID_DATA = 1007  # a text frame that is not UTF-8 (closed by the library)
    POLICY = 1008  # refused: missing, bad or foreign credentials, or too many connections
    TOO_BIG = 1009  # a frame above the gateway's ``max_size`` (closed by the library)
    INTERNAL_ERROR = 1011  # no pong in time for a keepalive ping (closed by the library)
    SERVICE_RESTART = 1012  # a draining gateway: reconnect elsewhere; a drop, not a goodbye
    RETRY = 4000  # our node agent's close before it reconnects: not a goodbye
    REPLACED = 4001  # a newer connection took this node id: do not reconnect quickly
    SLOW_CONSUMER = 4008  # the peer did not read: its outbound queue overflowed or a send timed out


# A node's own clean close: the scheduler then drops it at once instead of keeping its
# pools for a reconnect.
GRACEFUL_NODE_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.NO_STATUS})
GRACEFUL_SESSION_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})


class NodeStatus(StrEnum):
    REGISTERING = "registering"
    READY = "ready"
    DEGRADED = "degraded"
    DRAINING = "draining"
    OFFLINE = "offline"


class ServiceType(StrEnum):
    ASR = "asr"
    NMT = "nmt"
    TTS = "tts"
    TONE = "tone"
    SEMANTIC = "semantic"
    PHONETIC = "phonetic"
    PUNCTUATION = "punctuation"


PROTOCOL_VERSION = "1.0"  # session_init_ack's protocol_version
SAMPLE_RATE = 16000  # the only audio sample rate: what lingua's client records, nodes expect
MAX_TRACE_ID = 128  # characters of a client's or node's trace_id
# The gateway's defaults for sessions (LINGUA_WS_SESSION_MAX_FRAME_BYTES,
# LINGUA_MAX_UTTERANCE_MS): a larger frame is refused; a longer utterance is cut by the
# gateway, which numbers the rest as the next utterance.
SESSION_MAX_FRAME_BYTES = 512_000
MAX_UTTERANCE_MS = 20_000
