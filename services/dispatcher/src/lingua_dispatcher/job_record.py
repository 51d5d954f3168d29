"""A job as the dispatcher reads it: the record's fields, its pipeline and session options,
the pair it selects on and the services it needs."""

from __future__ import annotations

import json
from typing import Any

from lingua_shared.runtime import Infra

JOB_FIELDS = (
    "session_id",
    "utterance_index",
    "mode",
    "src_lang",
    "tgt_lang",
    "lang_a",
    "lang_b",
    "pair_src",
    "pair_tgt",
    "audio_format",
    "sample_rate",
    "pipeline",
    "trace_id",
    "state",
    "attempt",
    "wait_until",
    "received_at_ms",
    "gateway_id",
    "conn_id",
    "node_id",
    "tenant",
    "options",
    "release_reason",
)
# the session options forwarded to the node in job_assign
JOB_OPTIONS = (
    "auto_langs",
    "dialect",
    "features",
    "enable_streaming_asr",
    "partial_update_interval_ms",
)


async def read_job(infra: Infra, job_id: str) -> dict[str, str] | None:
    """The job's record (the fields above that are set), or None when it is gone."""
    values = await infra.redis.hmget(infra.keys.job(job_id), JOB_FIELDS)
    if values[JOB_FIELDS.index("state")] is None:
        return None
    return {k: v.decode() for k, v in zip(JOB_FIELDS, values, strict=True) if v is not None}


def needed_services(pipeline: dict[str, Any]) -> list[str]:
    services = ["asr", "semantic"]
    if pipeline.get("use_tts"):
        services.append("tts")
    return services


def pipeline_of(job: dict[str, Any]) -> dict[str, Any]:
    """A job's pipeline: the dict of a request, or the JSON of a job record."""
    raw = job["pipeline"]
    return raw if isinstance(raw, dict) else _json(raw)


def options_of(job: dict[str, Any]) -> dict[str, Any]:
    """The session options a job forwards: the dict of a request, or the record's JSON."""
    raw = job.get("options")
    return _json(raw) if isinstance(raw, str) else (raw or {})


def _json(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
