"""Enumerations shared by both ends of the wire (PROTOCOL.md)."""

from enum import StrEnum


class ErrorCode(StrEnum):
    """Error codes carried by ``error`` messages (SCREAMING_SNAKE_CASE, PROTOCOL.md)."""

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
