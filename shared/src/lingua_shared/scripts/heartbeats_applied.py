"""``heartbeats_applied.lua``: node-manager applied a gateway's heartbeat batch; the largest
sequence number applied is the gateway's flow control (``lingua_gateway.coalescer``), the
batch's ``covers_ms`` the gateway's heartbeat watermark (``lingua_node_manager.sweeper``)."""

from __future__ import annotations

from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import CodeResult
from lingua_shared.scripts.codes import check

NAME = "heartbeats_applied"
Result = CodeResult  # value: the largest sequence number applied


def args(
    keys: Keys, *, gateway_id: str, seq: int, ttl_ms: int, covers_ms: int | None = None
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [gateway_id, int(seq), int(ttl_ms), int(covers_ms or 0)]


def parse(reply: list[Any]) -> CodeResult:
    """APPLIED_MARKED, with the largest sequence number applied (``value``)."""
    return CodeResult(check(NAME, reply), str(int(reply[1])))
