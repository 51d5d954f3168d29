"""What a node connection knows of its node's capabilities, and what a heartbeat changes.

lingua's agent restates its services and languages in every heartbeat. When they differ from
the last beat's they are derived again (rule N1, ``derive_capabilities``): changed language
sets or services ride with the beat (node-manager re-pools the node); ASR or Semantic no
longer ready makes the node degraded (no new jobs) until a later beat shows them ready.
"""

from __future__ import annotations

from typing import Any

from lingua_gateway.metrics import Metrics
from lingua_shared.logs import get_logger
from lingua_shared.protocol import (
    CapabilityError,
    NodeCapabilities,
    NodeHeartbeat,
    NodeRegister,
    derive_capabilities,
)
from lingua_shared.settings import Settings

log = get_logger(__name__)
# heartbeat fields that restate the node's capabilities (lingua's agent sends them in every beat)
CAPABILITY_FIELDS = ("installed_services", "capability_by_type", "language_capabilities")


def raw_capabilities(obj: dict[str, Any]) -> tuple[Any, ...]:
    """The capability fields of a heartbeat as JSON values (compared, never interpreted)."""
    return tuple(obj.get(f) for f in CAPABILITY_FIELDS)


def without_capabilities(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in CAPABILITY_FIELDS}


def restated(hb: NodeHeartbeat) -> dict[str, Any]:
    """The capability fields a heartbeat carries (none, usually, from our own agent)."""
    return {f: getattr(hb, f) for f in CAPABILITY_FIELDS if getattr(hb, f) is not None}


def service_types(reg: NodeRegister) -> dict[str, str]:
    """Installed service id -> its type (``piper-tts`` -> ``tts``)."""
    return {
        svc.service_id: svc.type.lower()
        for svc in reg.installed_services or []
        if svc.service_id and svc.type
    }


class NodeProfile:
    """The registration a connection made (or waits to make), the capabilities Redis holds
    for it, whether the node is degraded, and its services' types."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # what the gateway registers again from when Redis loses the node, and what
        # heartbeats update
        self.registration: NodeRegister | None = None
        self.caps: NodeCapabilities | None = None  # as stored in Redis
        self.degraded = False  # ASR or Semantic no longer ready (a heartbeat said so)
        self.service_types: dict[str, str] = {}  # installed service id -> its type
        self._seen: tuple[Any, ...] | None = None  # the capability fields of the last beat
        # the same fields as the last fully decoded beat of the registered node sent them
        # (JSON values): a beat restating exactly these needs only its other fields decoded
        self.raw_seen: tuple[Any, ...] | None = None

    def derive(self, reg: NodeRegister) -> NodeCapabilities:
        """Rule N1 with this gateway's defaults; :class:`CapabilityError` if it fails."""
        s = self.settings
        return derive_capabilities(
            reg,
            default_region=s.node_default_region,
            default_gpu_tier=s.node_default_gpu_tier,
            default_capacity=s.node_default_capacity,
        )

    def registered(self, reg: NodeRegister, caps: NodeCapabilities) -> None:
        """Redis now holds ``caps``, registered from ``reg``: the node is ready."""
        self.registration, self.caps = reg, caps
        self.service_types = service_types(reg)
        self.degraded = False
        self.raw_seen = None

    def from_heartbeat(
        self, hb: NodeHeartbeat, node_id: str | None, conn_id: str
    ) -> NodeCapabilities | None:
        """Apply the capabilities a heartbeat restates: the new ones when they changed what
        Redis holds or the node's readiness, else None. A node whose ASR or Semantic is no
        longer ready becomes degraded (unschedulable) until a later beat shows them ready."""
        present = restated(hb)
        if not present or self.registration is None or self.caps is None:
            return None
        seen = tuple(present.get(f) for f in CAPABILITY_FIELDS)
        if seen == self._seen:
            return None  # the same as the last beat: the common case, nothing to derive
        self._seen = seen
        merged = self.registration.model_copy(update=present)
        try:
            caps = self.derive(merged)
        except CapabilityError as exc:
            if not self.degraded:
                self.degraded = True
                self.metrics.capability_changes.labels("degraded").inc()
                log.warning(
                    "gateway.node_degraded",
                    node_id=node_id,
                    conn_id=conn_id,
                    missing=exc.missing,
                    error=exc.message,
                )
            return None
        self.registration = merged
        self.service_types = service_types(merged)
        recovered, self.degraded = self.degraded, False
        if recovered:
            self.metrics.capability_changes.labels("ready").inc()
            log.info("gateway.node_ready_again", node_id=node_id, conn_id=conn_id)
        if (caps.lang_sets, caps.services) == (self.caps.lang_sets, self.caps.services):
            return caps if recovered else None
        self.metrics.capability_changes.labels("languages").inc()
        log.info(
            "gateway.node_capabilities_changed",
            node_id=node_id,
            lang_sets=caps.lang_sets,
            previous=self.caps.lang_sets,
        )
        self.caps = caps
        return caps

    def name_service_type(self, message: dict[str, Any]) -> None:
        """``MODEL_NOT_AVAILABLE`` names the service by its id (lingua: ``details.service_id``,
        e.g. ``piper-tts``); add its type from the node's ``installed_services``, which is what
        the dispatcher cools down."""
        err = message.get("error") if message.get("type") == "job_result" else message
        if not isinstance(err, dict) or err.get("code") != "MODEL_NOT_AVAILABLE":
            return
        details = err.get("details")
        if isinstance(details, dict) and "service_type" not in details:
            stype = self.service_types.get(str(details.get("service_id")))
            if stype:
                details["service_type"] = stype
