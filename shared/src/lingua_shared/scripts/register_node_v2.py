"""``register_node_v2.lua``: write (or refresh) a node's record with its liveness TTL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "register_node_v2"


@dataclass(frozen=True)
class RegisterResult:
    """``created``: a new record; else it refreshed one, and ``replaced_*`` name the live
    connection it replaced ("" when none or the same)."""

    created: bool
    replaced_gateway_id: str
    replaced_conn_id: str
    code: ScriptCode = ScriptCode.CREATED


Result = RegisterResult


def args(
    keys: Keys,
    *,
    node_id: str,
    now_ms: int,
    ttl_ms: int,
    region: str,
    gpu_tier: str,
    lang_sets: list[list[str]],
    capacity: int,
    services: dict[str, list[str]],
    gateway_id: str,
    conn_id: str,
    meta: dict[str, Any] | None = None,
    acks: bool = True,
    public: bool = True,
    tenant: str = "",
) -> tuple[list[str], list[Any]]:
    k = keys
    return [
        k.node(node_id),
        k.nodes_all,
        k.nodes_expiry,
        k.nodes_connected,
        k.node_retired(node_id),
    ], [
        node_id,
        now_ms,
        ttl_ms,
        region,
        gpu_tier,
        json.dumps(lang_sets),
        capacity,
        json.dumps(services),
        gateway_id,
        conn_id,
        json.dumps(meta or {}),
        int(acks),
        int(public),
        tenant,
    ]


def parse(reply: list[Any]) -> RegisterResult:
    code = check(NAME, reply)
    return RegisterResult(code == ScriptCode.CREATED, text(reply[1]), text(reply[2]), code)
