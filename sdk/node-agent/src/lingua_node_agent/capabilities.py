"""The ``node_register`` message of an agent, and the self-check it must pass before connecting.

The gateway validates every registration with ``derive_capabilities`` (requirement N1). Running
the same function here turns a misconfigured node into a clear error at start-up instead of a
reconnect loop against a gateway that keeps saying no.
"""

from __future__ import annotations

import functools
import platform as _platform
from importlib import metadata
from typing import Any

import psutil

from lingua_node_agent.config import AgentConfig
from lingua_node_agent.errors import ConfigError
from lingua_shared.protocol import (
    CapabilityByType,
    CapabilityError,
    Hardware,
    InstalledService,
    LanguageCapabilities,
    NodeCapabilities,
    NodeRegister,
    derive_capabilities,
)

CAPABILITY_SCHEMA_VERSION = "2.0"


@functools.cache
def agent_version() -> str:
    """The installed package version (what ``node_register.version`` reports)."""
    try:
        return metadata.version("lingua-node-agent")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@functools.cache
def local_platform() -> str:
    """``linux-x86_64`` and the like (cached: the simulator builds thousands of these)."""
    return f"{_platform.system().lower()}-{_platform.machine().lower()}"


def local_hardware() -> Hardware:
    """CPU cores and memory of this machine; GPUs are not probed (no vendor library is a
    dependency), which the protocol allows since ``gpus`` is optional."""
    mem = psutil.virtual_memory().total / 2**30
    return Hardware(cpu_cores=psutil.cpu_count() or 1, memory_gb=round(mem, 1))


def services_for(cfg: AgentConfig) -> tuple[list[InstalledService], list[CapabilityByType]]:
    """The services this node declares: ASR and Semantic always, TTS when it has languages.

    The SDK does not know which engines a handler wraps, so it declares the service types
    the scheduler selects on and leaves engine detail to ``installed_models``.
    """
    device = "gpu" if cfg.gpu_tier else "cpu"
    types = ["asr", "semantic"] + (["tts"] if cfg.tts_langs else [])
    installed = [
        InstalledService(service_id=f"agent-{t}", type=t, device=device, status="running")
        for t in types
    ]
    caps = [CapabilityByType(type=t, ready=True, ready_impl_ids=[f"agent-{t}"]) for t in types]
    return installed, caps


def language_capabilities(cfg: AgentConfig) -> LanguageCapabilities:
    """The languages of each service (sent in ``node_register``, and by lingua's agent in
    every heartbeat too)."""
    return LanguageCapabilities(
        asr_languages=cfg.effective_asr_langs(),
        semantic_languages=cfg.effective_semantic_langs(),
        tts_languages=list(cfg.tts_langs),
        semantic_core_ready=True,
    )


def build_register(cfg: AgentConfig, hardware: Hardware | None = None) -> NodeRegister:
    """The full ``node_register`` for ``cfg`` (``node_id`` is filled in at send time).

    Under the lingua profile it is what lingua's agent sends: none of our optional fields
    (``region``, ``gpu_tier``, ``lang_sets``, ``max_concurrent_jobs``,
    ``heartbeat_interval_ms``, ``acks_jobs``), so the gateway applies its defaults and the
    node's one language set is what ASR and Semantic share. Under the standard profile it
    announces all of them, and ``acks_jobs: true`` (this agent acks every job it takes).
    """
    installed, caps = services_for(cfg)
    ours: dict[str, Any] = {}
    if not cfg.lingua:
        ours = {
            "region": cfg.region,
            "gpu_tier": cfg.gpu_tier,
            "lang_sets": cfg.lang_sets,
            "max_concurrent_jobs": cfg.capacity,
            "heartbeat_interval_ms": cfg.effective_heartbeat_interval_ms(),
            "acks_jobs": True,
        }
    return NodeRegister(
        node_id=cfg.node_id,
        version=cfg.version or agent_version(),
        capability_schema_version=CAPABILITY_SCHEMA_VERSION,
        platform=cfg.platform or local_platform(),
        hardware=hardware if hardware is not None else local_hardware(),
        installed_models=[],
        installed_services=installed,
        capability_by_type=caps,
        features_supported={},
        accept_public_jobs=True,
        language_capabilities=language_capabilities(cfg),
        **ours,
    )


def self_check(register: NodeRegister) -> NodeCapabilities:
    """Apply the gateway's own rule; a :class:`ConfigError` names what is wrong."""
    try:
        return derive_capabilities(register)
    except CapabilityError as exc:
        raise ConfigError(f"invalid node capabilities: {exc.message}") from None
