"""``node_offline.lua``: take a node out of scheduling, fully (graceful, expired) or for the
reconnect grace (dropped)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "node_offline"


@dataclass(frozen=True)
class OfflineResult:
    code: ScriptCode  # OFFLINE, ALREADY_GONE, STALE_CONN or NOT_EXPIRED
    pools_removed: int


Result = OfflineResult


def args(
    keys: Keys, *, node_id: str, mode: str, conn_id: str = "", now_ms: int
) -> tuple[list[str], list[Any]]:
    k = keys
    return [
        k.node(node_id),
        k.node_pools(node_id),
        k.nodes_all,
        k.nodes_expiry,
        k.nodes_connected,
        k.prefix,
    ], [node_id, mode, conn_id, now_ms]


def parse(reply: list[Any]) -> OfflineResult:
    return OfflineResult(check(NAME, reply), int(reply[1]))
