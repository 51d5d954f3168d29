"""``pools_summary.lua``: members and load of a batch of pool shards, summed inside Redis."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts.codes import check

NAME = "pools_summary"


@dataclass(frozen=True)
class ShardSummary:
    """One pool shard's members and load; ``skipped`` (all zeros) when the entry is not a
    shard id or its pool key is not a sorted set (the script's empty row)."""

    members: int
    schedulable: int
    capacity: int
    running: int
    reserved: int
    skipped: bool = False


Result = list[ShardSummary]  # one per shard id, in order

SKIPPED = ShardSummary(0, 0, 0, 0, 0, skipped=True)


def args(keys: Keys, *, shard_ids: list[str]) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [json.dumps(shard_ids)]


def parse(reply: list[Any]) -> list[ShardSummary]:
    check(NAME, reply)
    return [ShardSummary(*(int(v) for v in entry)) if entry else SKIPPED for entry in reply[1:]]
