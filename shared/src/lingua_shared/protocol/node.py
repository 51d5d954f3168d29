"""Node <-> gateway messages (``/ws/node``) and the unions each direction decodes with.

The registration models live in :mod:`~lingua_shared.protocol.registration` and the capability
rule N1 in :mod:`~lingua_shared.protocol.capabilities`; both are importable from here too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from lingua_shared.protocol.capabilities import (
    LABEL_RE,
    LANG_RE,
    MAX_CAPACITY,
    MAX_LANG_SETS,
    MAX_LANGS_PER_SET,
    NODE_ID_RE,
    CapabilityError,
    NodeCapabilities,
    derive_capabilities,
)
from lingua_shared.protocol.codes import ErrorCode
from lingua_shared.protocol.common import ErrorMessage, WireModel, message_types
from lingua_shared.protocol.registration import (
    CapabilityByType,
    Hardware,
    InstalledService,
    LanguageCapabilities,
    NodeRegister,
    ResourceUsage,
)

__all__ = [
    "LABEL_RE",
    "LANG_RE",
    "MAX_CAPACITY",
    "MAX_LANGS_PER_SET",
    "MAX_LANG_SETS",
    "NODE_ID_RE",
    "NODE_INBOUND",
    "NODE_INBOUND_TYPES",
    "NODE_OUTBOUND",
    "NODE_OUTBOUND_TYPES",
    "CapabilityByType",
    "CapabilityError",
    "Hardware",
    "InstalledService",
    "JobAck",
    "JobAssign",
    "JobCancel",
    "JobResult",
    "JobResultError",
    "JobStarted",
    "LanguageCapabilities",
    "NodeAsrPartial",
    "NodeCapabilities",
    "NodeControl",
    "NodeError",
    "NodeHeartbeat",
    "NodeInbound",
    "NodeOutbound",
    "NodeRegister",
    "NodeRegisterAck",
    "Pipeline",
    "ResourceUsage",
    "derive_capabilities",
    "is_refusal",
    "result_is_refusal",
]


class NodeRegisterAck(WireModel):
    type: Literal["node_register_ack"] = "node_register_ack"
    node_id: str
    message: str = "registered"
    status: str = "ready"
    heartbeat_interval_ms: int | None = None


class NodeHeartbeat(WireModel):
    type: Literal["node_heartbeat"] = "node_heartbeat"
    node_id: str
    timestamp: int | None = None
    resource_usage: ResourceUsage | None = None
    installed_services: list[InstalledService] | None = None
    capability_by_type: list[CapabilityByType] | None = None
    language_capabilities: LanguageCapabilities | None = None
    # ours, optional: "draining" while the node finishes in-flight jobs before leaving
    status: str | None = None


class Pipeline(WireModel):
    use_asr: bool = True
    use_nmt: bool = True
    use_tts: bool = True
    use_semantic: bool | None = None
    use_tone: bool | None = None


class JobAssign(WireModel):
    type: Literal["job_assign"] = "job_assign"
    job_id: str
    attempt_id: int = 1
    session_id: str
    utterance_index: int
    src_lang: str
    tgt_lang: str
    pipeline: Pipeline = Field(default_factory=Pipeline)
    audio: str = ""
    audio_format: str = "pcm16"
    sample_rate: int = 16000
    trace_id: str | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    # what the session asked for, forwarded as lingua's scheduler does
    auto_langs: list[str] | None = None
    dialect: str | None = None
    features: dict[str, Any] | None = None
    enable_streaming_asr: bool | None = None
    partial_update_interval_ms: int | None = None


class JobCancel(WireModel):
    type: Literal["job_cancel"] = "job_cancel"
    job_id: str
    trace_id: str | None = None
    reason: str | None = None


class JobAck(WireModel):
    type: Literal["job_ack"] = "job_ack"
    job_id: str
    attempt_id: int = 1
    node_id: str | None = None
    session_id: str | None = None
    trace_id: str | None = None


class JobStarted(WireModel):
    type: Literal["job_started"] = "job_started"
    job_id: str
    attempt_id: int = 1
    node_id: str | None = None
    session_id: str | None = None
    trace_id: str | None = None


class JobResultError(WireModel):
    code: str
    message: str = ""
    details: dict[str, Any] | None = None


class JobResult(WireModel):
    type: Literal["job_result"] = "job_result"
    job_id: str
    attempt_id: int = 1
    node_id: str | None = None
    session_id: str | None = None
    utterance_index: int | None = None
    success: bool = True
    text_asr: str | None = None
    text_translated: str | None = None
    tts_audio: str | None = None
    tts_format: str | None = None
    processing_time_ms: float | None = None
    error: JobResultError | None = None
    trace_id: str | None = None


DUPLICATE_CODES = (ErrorCode.DUPLICATE_JOB_ID.value, ErrorCode.DUPLICATE_UTTERANCE_INDEX.value)


def is_refusal(code: str, message: str, details: dict[str, Any]) -> bool:
    """A failed job_result that only refuses a repeated job, sent at once rather than in
    turn: ours (INVALID_MESSAGE with ``details.refused``) or lingua's (PROCESSING_ERROR whose
    message starts with ``DUPLICATE_JOB_ID:`` / ``DUPLICATE_UTTERANCE_INDEX:``, or those
    codes themselves)."""
    if code == ErrorCode.INVALID_MESSAGE.value and details.get("refused"):
        return True
    if code in DUPLICATE_CODES:
        return True
    return code == ErrorCode.PROCESSING_ERROR.value and message.startswith(DUPLICATE_CODES)


def result_is_refusal(result: JobResult) -> bool:
    err = result.error
    return (
        not result.success
        and err is not None
        and is_refusal(err.code, err.message or "", err.details or {})
    )


class NodeAsrPartial(WireModel):
    type: Literal["asr_partial"] = "asr_partial"
    job_id: str
    node_id: str | None = None
    session_id: str | None = None
    utterance_index: int | None = None
    text: str = ""
    is_final: bool = False
    trace_id: str | None = None


class NodeError(WireModel):
    type: Literal["node_error"] = "node_error"
    node_id: str | None = None
    code: str
    message: str = ""
    details: dict[str, Any] | None = None


class NodeControl(WireModel):
    type: Literal["node_control"] = "node_control"
    command: str
    reason: str | None = None


NodeInbound = Annotated[
    NodeRegister
    | NodeHeartbeat
    | JobAck
    | JobStarted
    | JobResult
    | NodeAsrPartial
    | NodeError
    | ErrorMessage,
    Field(discriminator="type"),
]
"""Everything a node may send to the gateway."""

NODE_INBOUND: TypeAdapter[NodeInbound] = TypeAdapter(NodeInbound)

NodeOutbound = Annotated[
    NodeRegisterAck | JobAssign | JobCancel | NodeControl | ErrorMessage,
    Field(discriminator="type"),
]
"""Everything the gateway may send to a node (the agent decodes with this)."""

NODE_OUTBOUND: TypeAdapter[NodeOutbound] = TypeAdapter(NodeOutbound)

NODE_INBOUND_TYPES = message_types(NodeInbound)  # the gateway's known types on /ws/node
NODE_OUTBOUND_TYPES = message_types(NodeOutbound)  # the node agent's known types
