"""``stats:unserved`` is bounded: requests for pairs no pool covers are counted per pair for at
most 256 pairs, the rest together under ``other`` (real Redis, through select_node).

Clients choose their languages, so the pairs asked for are not bounded by the pools: before,
every new uncovered pair added a field to a hash that never expires.
"""

from __future__ import annotations

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts

NOW = 1_700_000_000_000
MAX_PAIRS = 256


def code(i: int) -> str:
    """A distinct valid 3-letter language code per i."""
    return "q" + chr(97 + i // 26 % 26) + chr(97 + i % 26)


async def test_unserved_counts_at_most_256_pairs_and_the_rest_as_other(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    await scripts.job_create(
        request_key="s1:0", job_id="j1", now_ms=NOW, ttl_ms=600_000,
        fields={"session_id": "s1", "utterance_index": 0}, audio="QUJD",
    )  # fmt: skip
    asks = 300
    for i in range(asks):
        sel = await scripts.select_node(
            job_id="j1", attempt=1, now_ms=NOW, lease_ms=3_000, pair_src=code(i),
            pair_tgt="en", services=["asr", "semantic"], policy="pack", candidates=8,
            wait_until_ms=0, retry_ms=100, deadline_ms=30_000,
        )  # fmt: skip
        assert (sel.code, sel.reason) == (ScriptCode.NO_NODE, "no_covering_pool")
    counts = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.unserved)).items()}
    assert len(counts) == MAX_PAIRS + 1
    assert counts["other"] == asks - MAX_PAIRS
    assert sum(counts.values()) == asks
    # a pair already counted keeps its own field
    await scripts.select_node(
        job_id="j1", attempt=1, now_ms=NOW, lease_ms=3_000, pair_src=code(0), pair_tgt="en",
        services=["asr", "semantic"], policy="pack", candidates=8, wait_until_ms=0,
        retry_ms=100, deadline_ms=30_000,
    )  # fmt: skip
    assert int(await redis.hget(keys.unserved, f"{code(0)}:en")) == 2
