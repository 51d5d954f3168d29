"""A replayed ``job_release`` never grants an attempt past the maximum (real Redis).

redis-py runs a script again when its reply was lost. Before, the release of the last attempt
left the job 'queued' with a rescue timer and answered a replay "not current": the caller then
failed nothing, and the timer dispatched attempt max + 1. Now the job is 'exhausted': a replay
answers EXHAUSTED again, and no selection takes it.
"""

from __future__ import annotations

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts
from lingua_shared.testing import key_snapshot, node_beat, node_registration

NOW = 1_700_000_000_000
MAX = 2


def select_kw(attempt: int) -> dict[str, object]:
    return {
        "job_id": "j1", "attempt": attempt, "now_ms": NOW, "lease_ms": 3_000,
        "pair_src": "zh", "pair_tgt": "en", "services": ["asr", "semantic"], "policy": "pack",
        "candidates": 8, "wait_until_ms": 0, "retry_ms": 100, "deadline_ms": 30_000,
    }  # fmt: skip


async def test_replayed_release_of_the_last_attempt_answers_exhausted_again(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    for n in ("a", "b", "c"):
        await scripts.register_node_v2(**node_registration(n, now_ms=NOW, ttl_ms=600_000))
        await scripts.heartbeat_with_pool_assign(**node_beat(n, now_ms=NOW))
    await scripts.job_create(
        request_key="s1:0", job_id="j1", now_ms=NOW, ttl_ms=600_000,
        fields={"session_id": "s1", "utterance_index": 0}, audio="QUJD",
    )  # fmt: skip
    release = {"job_id": "j1", "reason": "deadline", "now_ms": NOW + 10, "max_attempts": MAX}
    assert (await scripts.select_node(**select_kw(1))).code == ScriptCode.RESERVED
    first = await scripts.job_release(attempt=1, **release)
    assert (first.code, first.attempt) == (ScriptCode.RELEASED, 2)
    assert (await scripts.select_node(**select_kw(2))).code == ScriptCode.RESERVED

    last = await scripts.job_release(attempt=2, **release)
    assert (last.code, last.attempt) == (ScriptCode.EXHAUSTED, 2)
    assert await redis.hget(keys.job("j1"), "state") == b"exhausted"
    before = await key_snapshot(redis)
    replay = await scripts.job_release(attempt=2, **release)  # the reply was lost
    assert (replay.code, replay.attempt, replay.node_id) == (
        ScriptCode.EXHAUSTED,
        2,
        last.node_id,
    )
    assert await key_snapshot(redis) == before
    # no third attempt, whoever asks (the rescue timer's dispatch included)
    third = await scripts.select_node(**select_kw(3))
    assert third.code == ScriptCode.NOT_WAITING
    assert await key_snapshot(redis) == before
    # the failure still ends it
    done = await scripts.job_finish(
        job_id="j1", attempt=0, node_id="", now_ms=NOW + 20, outcome="failed",
        payload={"type": "missing_result"}, gap_ms=5_000, session_ttl_ms=600_000,
    )  # fmt: skip
    assert done.code == ScriptCode.FINISHED
    assert await redis.hget(keys.job("j1"), "state") == b"failed"
    assert await redis.zscore(keys.timers, "j1") is None
