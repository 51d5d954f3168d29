"""``nodes_summary.lua``: counts and load of a batch of node records, summed inside Redis."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import flat_counts, text
from lingua_shared.scripts.codes import check

NAME = "nodes_summary"


@dataclass(frozen=True)
class NodesSummary:
    """Totals over a batch of node records (see the script's header)."""

    alive: int
    schedulable: int
    capacity: int
    running: int
    reserved: int
    by_region: dict[str, int]
    by_gpu_tier: dict[str, int]
    unschedulable: list[str]
    invalid: list[str] = field(default_factory=list)  # skipped: bad id, key or record


Result = NodesSummary


def args(keys: Keys, *, node_ids: list[str]) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [json.dumps(node_ids)]


def parse(reply: list[Any]) -> NodesSummary:
    check(NAME, reply)
    _, alive, sched, cap, run, res, regions, tiers, unsched, invalid = reply
    return NodesSummary(
        alive=int(alive),
        schedulable=int(sched),
        capacity=int(cap),
        running=int(run),
        reserved=int(res),
        by_region=flat_counts(regions),
        by_gpu_tier=flat_counts(tiers),
        unschedulable=[text(n) for n in unsched],
        # as the caller sent them; bytes that are not UTF-8 must not fail the summary
        invalid=[n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in invalid],
    )
