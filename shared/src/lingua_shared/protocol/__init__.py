"""Wire protocol of the lingua network (PROTOCOL.md), as pydantic models.

Every message is a JSON object tagged by ``type``. Unknown fields are accepted and kept
(``extra="allow"``), never an error: existing lingua nodes and web clients send more than we
read. Our own additions are optional fields.
"""

from lingua_shared.protocol.codes import ErrorCode, NodeStatus, ServiceType
from lingua_shared.protocol.common import ErrorMessage, WireModel
from lingua_shared.protocol.node import (
    NODE_INBOUND,
    NODE_OUTBOUND,
    CapabilityByType,
    CapabilityError,
    Hardware,
    InstalledService,
    JobAck,
    JobAssign,
    JobCancel,
    JobResult,
    JobResultError,
    JobStarted,
    LanguageCapabilities,
    NodeAsrPartial,
    NodeCapabilities,
    NodeControl,
    NodeError,
    NodeHeartbeat,
    NodeInbound,
    NodeOutbound,
    NodeRegister,
    NodeRegisterAck,
    Pipeline,
    ResourceUsage,
    derive_capabilities,
    is_refusal,
    result_is_refusal,
)

__all__ = [
    "NODE_INBOUND",
    "NODE_OUTBOUND",
    "CapabilityByType",
    "CapabilityError",
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
    "result_is_refusal",
]
