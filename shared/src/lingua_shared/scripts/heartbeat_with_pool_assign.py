"""``heartbeat_with_pool_assign.lua``: refresh a node's liveness and load, (re)compute its
pools."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "heartbeat_with_pool_assign"


@dataclass(frozen=True)
class HeartbeatResult:
    code: ScriptCode  # ALIVE, NOT_REGISTERED or STALE
    pools_changed: bool

    @property
    def alive(self) -> bool:
        return self.code == ScriptCode.ALIVE


Result = HeartbeatResult


def args(
    keys: Keys,
    *,
    node_id: str,
    conn_id: str,
    gateway_id: str,
    now_ms: int,
    ttl_ms: int = 0,
    running_jobs: int | None = None,
    cpu_percent: float | None = None,
    gpu_percent: float | None = None,
    mem_percent: float | None = None,
    max_shard_size: int = 256,
    status: str | None = None,
    lang_sets: list[list[str]] | None = None,
    services: dict[str, list[str]] | None = None,
) -> tuple[list[str], list[Any]]:
    def num(v: float | None) -> float:
        return -1 if v is None else v

    k = keys
    return [
        k.node(node_id),
        k.node_pools(node_id),
        k.nodes_expiry,
        k.nodes_connected,
        k.prefix,
    ], [
        node_id,
        conn_id,
        gateway_id,
        now_ms,
        ttl_ms,
        num(running_jobs),
        num(cpu_percent),
        num(gpu_percent),
        num(mem_percent),
        max_shard_size,
        status or "",
        json.dumps(lang_sets) if lang_sets is not None else "",
        json.dumps(services) if services is not None else "",
    ]


def parse(reply: list[Any]) -> HeartbeatResult:
    code = check(NAME, reply)
    return HeartbeatResult(code, code == ScriptCode.ALIVE and int(reply[1]) == 1)


def require_registered(result: HeartbeatResult, node_id: str) -> None:
    """Raise :class:`NodeNotRegistered` when the beat found no live record."""
    code = result.code
    if code == ScriptCode.NOT_REGISTERED and code.exception is not None:
        raise code.exception(f"node {node_id} is not registered", {"node_id": node_id})
