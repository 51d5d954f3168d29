"""Which cell a new session lives in (``lingua_shared.cells``).

A session's *home* cell is the cell of its region: the ``region`` of its ``session_init``,
else this gateway's ``LINGUA_GATEWAY_REGION``, else the default cell. It is placed in the
first cell of the home cell's ladder that has a node free for its language pair; when none
has, in the first that has a pool covering the pair at all (its jobs wait there for a slot
as in one cell); when no cell covers the pair, at home (its jobs are answered as unserved
there). One lookup per cell, all in one round trip: the pair index ``pairbest:<a>:<b>``
holds each shard's lowest free score (``FULL`` when none is free).

A session stays in its cell for its whole life: its ordered delivery, its node affinity and
each job's record are written by one script each, in one slot, so a session's jobs cannot
be split over cells. A placement elsewhere than home counts in the home cell's
``stats:fallbacks`` (field: the cell placed in).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_gateway.metrics import Metrics
from lingua_shared.cells import CellMap
from lingua_shared.errors import DependencyDown
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger

log = get_logger(__name__)
FULL = 1e9  # pairbest's score of a shard with no free node (lua/lib/pools.lua)


class Placement:
    def __init__(self, redis: Redis, cells: CellMap, gateway_region: str, metrics: Metrics) -> None:
        self.redis = redis
        self.cells = cells
        self.gateway_region = gateway_region or None
        self.metrics = metrics

    def home(self, region: str | None) -> str:
        return self.cells.cell_of(region or self.gateway_region)

    async def place(self, region: str | None, pair: tuple[str, str]) -> tuple[str, str]:
        """``(home cell, cell placed in)``; :class:`DependencyDown` when Redis fails."""
        home = self.home(region)
        ladder = self.cells.ladder(home)
        if len(ladder) == 1:
            return home, home
        src, tgt = pair
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for cell in ladder:
                    pipe.zrange(Keys(cell).pair_best(src, tgt), 0, 0, withscores=True)
                best = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"cannot read the cells' pools: {exc}") from exc
        free = [c for c, top in zip(ladder, best, strict=True) if top and top[0][1] < FULL]
        covered = [c for c, top in zip(ladder, best, strict=True) if top]
        cell = free[0] if free else covered[0] if covered else home
        if cell != home:
            self.metrics.session_fallbacks.labels(home, cell).inc()
            try:
                await self.redis.hincrby(Keys(home).fallbacks, cell, 1)
            except (RedisError, OSError) as exc:  # a display counter: the session goes on
                log.warning("gateway.fallback_count_failed", error=repr(exc))
        return home, cell
