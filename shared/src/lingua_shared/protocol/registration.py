"""What a node says about itself: the ``node_register`` message and the parts it shares with
heartbeats (services, capabilities by type, languages, hardware, resource usage)."""

from __future__ import annotations

from typing import Any, Literal

from lingua_shared.protocol.common import WireModel


class Hardware(WireModel):
    cpu_cores: int | None = None
    memory_gb: float | None = None
    gpus: list[dict[str, Any]] | None = None


class InstalledService(WireModel):
    service_id: str | None = None
    type: str | None = None
    device: str | None = None
    status: str | None = None


class CapabilityByType(WireModel):
    type: str
    ready: bool = False
    reason: str | None = None
    ready_impl_ids: list[str] | None = None


class LanguageCapabilities(WireModel):
    asr_languages: list[str] | None = None
    tts_languages: list[str] | None = None
    semantic_languages: list[str] | None = None
    semantic_core_ready: bool | None = None


class ResourceUsage(WireModel):
    cpu_percent: float | None = None
    gpu_percent: float | None = None
    gpu_mem_percent: float | None = None
    mem_percent: float | None = None
    running_jobs: int | None = None


class NodeRegister(WireModel):
    type: Literal["node_register"] = "node_register"
    node_id: str | None = None
    version: str | None = None
    capability_schema_version: str | None = None
    platform: str | None = None
    hardware: Hardware | None = None
    installed_models: list[Any] | None = None
    installed_services: list[InstalledService] | None = None
    capability_by_type: list[CapabilityByType] | None = None
    features_supported: dict[str, Any] | None = None
    accept_public_jobs: bool | None = None
    language_capabilities: LanguageCapabilities | None = None
    # ours, optional
    region: str | None = None
    gpu_tier: str | None = None
    lang_sets: list[list[str]] | None = None
    max_concurrent_jobs: int | None = None
    heartbeat_interval_ms: int | None = None
    # ours, optional: the node sends job_ack for every job it takes (lingua's agent never
    # does: its jobs count as accepted when they are assigned)
    acks_jobs: bool | None = None
    # ours, optional: the tenant whose jobs a node with accept_public_jobs false takes
    tenant_id: str | None = None
