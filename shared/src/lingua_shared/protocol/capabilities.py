"""The capability rule N1 (docs/protocol.md §2.3): what a registration must say to be
schedulable, and what the scheduler stores about it.

``derive_capabilities`` turns a ``node_register`` into the language sets, region, gpu tier,
capacity and ready services. It is pure so that the gateway (validation before anything is
published), the node agent (a self-check before connecting) and the tests share one rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# the language code rule lives in protocol.langs (LANG_RE re-exported for older imports)
from lingua_shared.protocol.langs import LANG_RE as LANG_RE
from lingua_shared.protocol.langs import MAX_LANGS_PER_SET, norm_lang
from lingua_shared.protocol.registration import LanguageCapabilities, NodeRegister

LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_LANG_SETS = 16
MAX_CAPACITY = 256


class CapabilityError(ValueError):
    """A registration that rule N1 rejects; ``missing`` names what is missing."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing or []


@dataclass(frozen=True)
class NodeCapabilities:
    """What the scheduler stores about a node, derived from its ``node_register``."""

    region: str
    gpu_tier: str
    lang_sets: list[list[str]]
    capacity: int
    services: dict[str, list[str]] = field(default_factory=dict)
    heartbeat_interval_ms: int | None = None
    acks_jobs: bool = False
    accept_public_jobs: bool = True
    tenant: str = ""


def _norm_lang(lang: Any) -> str:
    if not isinstance(lang, str):
        raise CapabilityError(f"language codes must be strings, got {lang!r}")
    code = norm_lang(lang)
    if code is None:
        raise CapabilityError(
            f"invalid language code {lang[:40]!r} (expected e.g. 'en', 'yue', 'pt-br', 'zh-hant')"
        )
    return code


def _norm_langs(langs: list[Any] | None) -> list[str]:
    return sorted({_norm_lang(x) for x in (langs or [])})


def _service_ready(reg: NodeRegister, stype: str) -> bool:
    entries = [c for c in (reg.capability_by_type or []) if c.type == stype]
    if entries:
        return any(c.ready for c in entries)
    return any(
        s.type == stype and (s.status or "").lower() in ("running", "ready")
        for s in (reg.installed_services or [])
    )


def _label(value: str | None, default: str, what: str) -> str:
    if value is None or value == "":
        return default
    label = value.strip().lower()
    if not LABEL_RE.fullmatch(label):
        raise CapabilityError(
            f"invalid {what} {value!r}: lowercase letters, digits, '_', '.', '-' (at most 32)"
        )
    return label


def derive_capabilities(
    reg: NodeRegister,
    *,
    default_region: str = "default",
    default_gpu_tier: str = "default",
    default_capacity: int = 4,
) -> NodeCapabilities:
    """Apply rule N1 (docs/protocol.md §2.3) to a registration, or raise :class:`CapabilityError`.

    A node is valid when ASR and Semantic are both ready with at least one language each.
    Without ``lang_sets`` its language set is the languages both ASR and Semantic support.
    """
    if reg.node_id is not None and not NODE_ID_RE.fullmatch(reg.node_id):
        raise CapabilityError(
            f"invalid node_id {reg.node_id!r}: 1-64 of letters, digits, '_', '.', '-'"
        )
    langcaps = reg.language_capabilities or LanguageCapabilities()
    asr_langs = _norm_langs(langcaps.asr_languages)
    sem_langs = _norm_langs(langcaps.semantic_languages)
    missing: list[str] = []
    if not _service_ready(reg, "asr"):
        missing.append("a ready ASR service (capability_by_type asr ready=true)")
    if not asr_langs:
        missing.append("ASR languages (language_capabilities.asr_languages)")
    if not _service_ready(reg, "semantic"):
        missing.append("a ready Semantic service (capability_by_type semantic ready=true)")
    if not sem_langs:
        missing.append("Semantic languages (language_capabilities.semantic_languages)")
    if missing:
        raise CapabilityError("node rejected, missing: " + "; ".join(missing), missing)

    if reg.lang_sets:
        if len(reg.lang_sets) > MAX_LANG_SETS:
            raise CapabilityError(f"too many lang_sets ({len(reg.lang_sets)} > {MAX_LANG_SETS})")
        sets: list[list[str]] = []
        for raw in reg.lang_sets:
            langs = _norm_langs(raw)
            if len(langs) < 2:
                raise CapabilityError(f"lang_set {raw!r} needs at least two distinct languages")
            if len(langs) > MAX_LANGS_PER_SET:
                raise CapabilityError(
                    f"lang_set {raw!r} has more than {MAX_LANGS_PER_SET} languages"
                )
            unsupported = sorted(set(langs) - (set(asr_langs) & set(sem_langs)))
            if unsupported:
                raise CapabilityError(
                    f"lang_set {raw!r} names {unsupported}, which ASR and Semantic do not both "
                    f"support (asr={asr_langs}, semantic={sem_langs})",
                    [f"ASR and Semantic support for {', '.join(unsupported)}"],
                )
            if langs not in sets:
                sets.append(langs)
    else:
        common = sorted(set(asr_langs) & set(sem_langs))
        if len(common) < 2:
            raise CapabilityError(
                "node rejected: ASR and Semantic share fewer than two languages "
                f"(asr={asr_langs}, semantic={sem_langs}); send lang_sets or more languages",
                ["a language set of at least two languages supported by both ASR and Semantic"],
            )
        if len(common) > MAX_LANGS_PER_SET:
            raise CapabilityError(
                f"ASR and Semantic share {len(common)} languages (> {MAX_LANGS_PER_SET}): "
                "send explicit lang_sets"
            )
        sets = [common]

    capacity = reg.max_concurrent_jobs if reg.max_concurrent_jobs is not None else default_capacity
    if not 1 <= capacity <= MAX_CAPACITY:
        raise CapabilityError(f"max_concurrent_jobs must be 1..{MAX_CAPACITY}, got {capacity}")
    hb = reg.heartbeat_interval_ms
    if hb is not None and not 100 <= hb <= 600_000:
        raise CapabilityError(f"heartbeat_interval_ms must be 100..600000, got {hb}")

    tenant = reg.tenant_id or ""
    if tenant and not NODE_ID_RE.fullmatch(tenant):
        raise CapabilityError(
            f"invalid tenant_id {tenant[:70]!r}: 1-64 of letters, digits, '_', '.', '-'"
        )
    services: dict[str, list[str]] = {"asr": asr_langs, "semantic": sem_langs}
    for stype in ("nmt", "tts", "tone", "phonetic", "punctuation"):
        if _service_ready(reg, stype):
            services[stype] = _norm_langs(langcaps.tts_languages) if stype == "tts" else []
    return NodeCapabilities(
        region=_label(reg.region, default_region, "region"),
        gpu_tier=_label(reg.gpu_tier, default_gpu_tier, "gpu_tier"),
        lang_sets=sorted(sets),
        capacity=capacity,
        services=services,
        heartbeat_interval_ms=hb,
        acks_jobs=bool(reg.acks_jobs),
        accept_public_jobs=reg.accept_public_jobs is not False,
        tenant=tenant,
    )
