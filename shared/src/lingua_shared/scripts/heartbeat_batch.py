"""``heartbeat_batch.lua``: many nodes' heartbeats in one call, each applied as
``heartbeat_with_pool_assign`` applies one; the result of each beat in order."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import heartbeat_with_pool_assign as one
from lingua_shared.scripts.codes import check

NAME = "heartbeat_batch"
MAX_BEATS = 1000  # the script's limit per call
BeatResult = one.HeartbeatResult | ScriptRejected
Result = list[BeatResult]


def _num(v: float | None) -> str:
    return "-1" if v is None else repr(v)


def beat_args(
    *,
    node_id: str,
    conn_id: str,
    running_jobs: int | None = None,
    cpu_percent: float | None = None,
    gpu_percent: float | None = None,
    mem_percent: float | None = None,
    status: str | None = None,
    lang_sets: list[list[str]] | None = None,
    services: dict[str, list[str]] | None = None,
) -> list[str]:
    """One beat of ``beats``: heartbeat_with_pool_assign's per-node ARGV, as strings."""
    return [
        node_id,
        conn_id,
        _num(running_jobs),
        _num(cpu_percent),
        _num(gpu_percent),
        _num(mem_percent),
        status or "",
        json.dumps(lang_sets) if lang_sets is not None else "",
        json.dumps(services) if services is not None else "",
    ]


def args(
    keys: Keys,
    *,
    gateway_id: str,
    now_ms: int,
    max_shard_size: int,
    beats: Iterable[list[str]],
) -> tuple[list[str], list[Any]]:
    """``beats``: each built by :func:`beat_args`."""
    return [keys.prefix], [
        gateway_id,
        now_ms,
        max_shard_size,
        json.dumps(list(beats), separators=(",", ":")),
    ]


def parse(reply: list[Any]) -> Result:
    """BATCH_APPLIED: each beat's :class:`HeartbeatResult`, or the :class:`ScriptRejected` of
    a beat whose input was invalid (that beat wrote nothing)."""
    check(NAME, reply)
    out: Result = []
    for r in reply[1]:
        try:
            out.append(one.parse(r))
        except ScriptRejected as exc:
            out.append(exc)
    return out
