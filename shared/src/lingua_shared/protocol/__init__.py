"""Wire protocol of the lingua network (docs/protocol.md), as pydantic models.

Every message is a JSON object tagged by ``type``. Unknown fields are accepted and kept
(``extra="allow"``), never an error: existing lingua nodes and web clients send more than we
read. Our own additions are optional fields.

Modules: ``codes`` (error and close codes, shared limits), ``common`` (base model, ``error``),
``registration`` and ``capabilities`` (``node_register`` and rule N1), ``node`` (``/ws/node``),
``session`` (``/ws/session`` and its binary frames).
"""

from lingua_shared.protocol.capabilities import (
    CapabilityError,
    NodeCapabilities,
    derive_capabilities,
)
from lingua_shared.protocol.codes import (
    GRACEFUL_NODE_CLOSES,
    GRACEFUL_SESSION_CLOSES,
    MAX_TRACE_ID,
    MAX_UTTERANCE_MS,
    PROTOCOL_VERSION,
    SAMPLE_RATE,
    SESSION_MAX_FRAME_BYTES,
    CloseCode,
    ErrorCode,
    NodeStatus,
    ServiceType,
)
from lingua_shared.protocol.common import ErrorMessage, WireModel, message_types
from lingua_shared.protocol.node import (
    NODE_INBOUND,
    NODE_INBOUND_TYPES,
    NODE_OUTBOUND,
    NODE_OUTBOUND_TYPES,
    JobAck,
    JobAssign,
    JobCancel,
    JobResult,
    JobResultError,
    JobStarted,
    NodeAsrPartial,
    NodeControl,
    NodeError,
    NodeHeartbeat,
    NodeInbound,
    NodeOutbound,
    NodeRegisterAck,
    Pipeline,
    is_refusal,
    result_is_refusal,
)
from lingua_shared.protocol.registration import (
    CapabilityByType,
    Hardware,
    InstalledService,
    LanguageCapabilities,
    NodeRegister,
    ResourceUsage,
)

__all__ = [
    "GRACEFUL_NODE_CLOSES",
    "GRACEFUL_SESSION_CLOSES",
    "MAX_TRACE_ID",
    "MAX_UTTERANCE_MS",
    "NODE_INBOUND",
    "NODE_INBOUND_TYPES",
    "NODE_OUTBOUND",
    "NODE_OUTBOUND_TYPES",
    "PROTOCOL_VERSION",
    "SAMPLE_RATE",
    "SESSION_MAX_FRAME_BYTES",
    "CapabilityByType",
    "CapabilityError",
    "CloseCode",
    "ErrorCode",
    "ErrorMessage",
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
    "NodeStatus",
    "Pipeline",
    "ResourceUsage",
    "ServiceType",
    "WireModel",
    "derive_capabilities",
    "is_refusal",
    "message_types",
    "result_is_refusal",
]
