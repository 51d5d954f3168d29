"""``service_cooldown.lua``: selection skips a node for jobs needing a service until a
cool-down ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import CodeResult, text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "service_cooldown"


@dataclass(frozen=True)
class Cooldown(CodeResult):
    """COOLING: ``value`` is the end of the cool-down (ms); NO_SUCH_NODE."""

    @property
    def until_ms(self) -> int:
        return int(self.value) if self.code == ScriptCode.COOLING else 0


Result = Cooldown


def args(
    keys: Keys, *, node_id: str, service: str, until_ms: int, now_ms: int = 0
) -> tuple[list[str], list[Any]]:
    return [keys.node(node_id), keys.prefix], [node_id, service, until_ms, now_ms]


def parse(reply: list[Any]) -> Cooldown:
    return Cooldown(check(NAME, reply), text(reply[1]))
