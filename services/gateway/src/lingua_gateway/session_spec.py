"""What a ``session_init`` asks for, validated once (J1, docs/protocol.md §3.3).

A session's mode and languages are fixed for its life: every utterance's job request carries
them, and selection binds the session to a pool by them (J3). Validation is pure, so each
rule is unit-tested; a refusal is a typed error and the connection stays open.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from lingua_gateway.utterance import AUDIO_FORMATS, OPUS
from lingua_shared.errors import InvalidMessage, UnsupportedFeature
from lingua_shared.keys import KEY_LABEL_RE
from lingua_shared.protocol import MAX_TRACE_ID, SAMPLE_RATE
from lingua_shared.protocol.capabilities import NODE_ID_RE
from lingua_shared.protocol.langs import norm_lang
from lingua_shared.protocol.session import SessionInit

ONE_WAY = "one_way"
TWO_WAY = "two_way_auto"
MODES = (ONE_WAY, TWO_WAY)
AUTO = "auto"


# how a session's answers reach its client: "arrival" sends each as soon as it is ready
# (lingua's scheduler; its web client shows each result under its index), "ordered" strictly
# by utterance index (a hole holds later answers until it is answered or times out)
ARRIVAL = "arrival"
ORDERED = "ordered"
DELIVERIES = (ARRIVAL, ORDERED)
MAX_OPTION_BYTES = 2_048  # features / dialect / auto_langs, forwarded to nodes with every job


@dataclass(frozen=True)
class SessionSpec:
    mode: str
    src_lang: str  # "auto" in two-way sessions: the source is detected per utterance
    tgt_lang: str
    lang_a: str | None
    lang_b: str | None
    audio_format: str
    sample_rate: int
    trace_id: str
    delivery: str = ARRIVAL
    tenant_id: str | None = None
    # forwarded in every job_assign: auto_langs, dialect, features, enable_streaming_asr,
    # partial_update_interval_ms (only those the client sent)
    options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, str]:
        """The session's fields in its Redis record (empty string for "none")."""
        return {
            "mode": self.mode,
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "lang_a": self.lang_a or "",
            "lang_b": self.lang_b or "",
            "audio_format": self.audio_format,
            "sample_rate": str(self.sample_rate),
            "delivery": self.delivery,
            "tenant": self.tenant_id or "",
        }


def check_region(value: str | None) -> str | None:
    """The session's region (its cell is the region's: ``lingua_shared.cells``), lowercased;
    a typed error for one that is not a label."""
    if value is None:
        return None
    region = value.strip().lower()
    if not KEY_LABEL_RE.fullmatch(region):
        raise InvalidMessage(
            "region: 1-64 of a-z 0-9 _ . - starting with a letter or digit",
            {"field": "region"},
        )
    return region


def lang_code(value: str | None, field: str) -> str:
    """A language code by the rule nodes declare theirs with (``protocol/langs.py``):
    normalised (lowercase, ``-``), or INVALID_MESSAGE naming the field."""
    if value is None or value == "":
        raise InvalidMessage(f"session_init needs {field}", {"field": field})
    code = norm_lang(value)
    if code is None:
        raise InvalidMessage(
            f"invalid {field} {str(value)[:40]!r} (expected a code such as 'en', 'yue', "
            "'pt-br', 'zh-hant')",
            {"field": field},
        )
    return code


def session_options(msg: SessionInit) -> dict[str, Any]:
    """What the client asks nodes for, validated; forwarded in every ``job_assign``."""
    options: dict[str, Any] = {}
    if msg.auto_langs is not None:
        if not isinstance(msg.auto_langs, list) or len(msg.auto_langs) > 16:
            raise InvalidMessage("auto_langs must be a list of at most 16 language codes")
        options["auto_langs"] = [lang_code(x, "auto_langs") for x in msg.auto_langs]
    if msg.dialect is not None:
        options["dialect"] = msg.dialect
    if msg.features is not None:
        options["features"] = msg.features
    if msg.enable_streaming_asr is not None:
        options["enable_streaming_asr"] = msg.enable_streaming_asr
    if msg.partial_update_interval_ms is not None:
        if not 0 < msg.partial_update_interval_ms <= 60_000:
            raise InvalidMessage("partial_update_interval_ms must be 1..60000")
        options["partial_update_interval_ms"] = msg.partial_update_interval_ms
    if len(json.dumps(options)) > MAX_OPTION_BYTES:
        raise InvalidMessage(
            f"auto_langs, dialect and features take more than {MAX_OPTION_BYTES} bytes"
        )
    return options


def spec_from_init(msg: SessionInit, default_delivery: str = ARRIVAL) -> SessionSpec:
    """Validate a ``session_init``; raises :class:`InvalidMessage` / :class:`UnsupportedFeature`."""
    mode = msg.mode or ONE_WAY
    if mode not in MODES:
        raise UnsupportedFeature(
            f"unknown session mode {mode[:40]!r}", {"field": "mode", "supported": list(MODES)}
        )
    audio_format = (msg.audio_format or OPUS).lower()
    if audio_format not in AUDIO_FORMATS:
        raise UnsupportedFeature(
            f"unsupported audio_format {audio_format[:40]!r}",
            {"field": "audio_format", "supported": list(AUDIO_FORMATS)},
        )
    if msg.sample_rate is not None and msg.sample_rate != SAMPLE_RATE:
        raise UnsupportedFeature(
            f"sample_rate {msg.sample_rate} is not supported: send {SAMPLE_RATE} Hz mono",
            {"field": "sample_rate", "supported": [SAMPLE_RATE]},
        )
    trace_id = msg.trace_id or str(uuid.uuid4())
    if len(trace_id) > MAX_TRACE_ID:
        raise InvalidMessage(f"trace_id longer than {MAX_TRACE_ID} characters")
    lang_a = lang_b = None
    if mode == ONE_WAY:
        if (msg.src_lang or "").strip().lower() == AUTO:
            raise InvalidMessage(
                "one_way sessions need a source language: src_lang 'auto' is only for "
                "two_way_auto (with lang_a and lang_b)",
                {"field": "src_lang"},
            )
        src = lang_code(msg.src_lang, "src_lang")
        tgt = lang_code(msg.tgt_lang, "tgt_lang")
        if src == tgt:
            raise InvalidMessage(f"src_lang and tgt_lang are both {src!r}", {"field": "tgt_lang"})
    else:
        lang_a = lang_code(msg.lang_a, "lang_a")
        lang_b = lang_code(msg.lang_b, "lang_b")
        if lang_a == lang_b:
            raise InvalidMessage(f"lang_a and lang_b are both {lang_a!r}", {"field": "lang_b"})
        if (msg.src_lang or AUTO).strip().lower() != AUTO:
            raise InvalidMessage(
                "two_way_auto detects the source language per utterance: src_lang must be "
                "'auto' (or absent)",
                {"field": "src_lang"},
            )
        src = AUTO
        # lingua's client sends tgt_lang = lang_b; the node picks the other one per utterance
        tgt = lang_code(msg.tgt_lang, "tgt_lang") if msg.tgt_lang else lang_b
        if tgt not in (lang_a, lang_b):
            raise InvalidMessage(
                f"tgt_lang {tgt!r} is neither lang_a nor lang_b", {"field": "tgt_lang"}
            )
    delivery = (msg.result_delivery or default_delivery).strip().lower()
    if delivery not in DELIVERIES:
        raise UnsupportedFeature(
            f"unknown result_delivery {delivery[:40]!r}",
            {"field": "result_delivery", "supported": list(DELIVERIES)},
        )
    tenant = msg.tenant_id or None
    if tenant is not None and not NODE_ID_RE.fullmatch(tenant):
        raise InvalidMessage(
            "tenant_id must be 1-64 of letters, digits, '_', '.', '-'", {"field": "tenant_id"}
        )
    return SessionSpec(
        mode=mode,
        src_lang=src,
        tgt_lang=tgt,
        lang_a=lang_a,
        lang_b=lang_b,
        audio_format=audio_format,
        sample_rate=SAMPLE_RATE,
        trace_id=trace_id,
        delivery=delivery,
        tenant_id=tenant,
        options=session_options(msg),
    )
