"""The session store against a real Redis: a restored record never moves the delivery cursor
back; a resume binds the session here and hands back its outbox; what the client was sent is
acknowledged in batches."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from lingua_gateway.session_resume import plan_resume
from lingua_gateway.session_store import SessionStore
from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts


class RacingRedis:
    """A real client; right after the first pipeline (the touch's PEXPIRE, which found the
    record gone) a script writes the record's cursor, as job_finish does when it releases."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis, self.key, self.raced = redis, key, False

    def pipeline(self, **kw: Any) -> Any:
        outer = self
        real = self.redis.pipeline(**kw)

        class Pipe:
            async def __aenter__(self) -> Any:
                await real.__aenter__()
                return self

            async def __aexit__(self, *exc: Any) -> None:
                await real.__aexit__(*exc)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def execute(self) -> Any:
                result = await real.execute()
                if not outer.raced:
                    outer.raced = True
                    await outer.redis.hset(outer.key, "next_deliver", "7")
                return result

        return Pipe()


async def test_a_restored_record_never_moves_the_cursor_back(redis: Redis, keys: Keys):
    store = SessionStore(RacingRedis(redis, keys.session("s1")), keys, 60)  # type: ignore[arg-type]
    fields = {"gateway_id": "gw-1", "conn_id": "c1", "mode": "one_way", "next_deliver": "3"}
    assert await store.touch("s1", fields) is True  # gone: restored
    h = await redis.hgetall(keys.session("s1"))
    assert h[b"next_deliver"] == b"7" and h[b"conn_id"] == b"c1"
    assert 0 < await redis.pttl(keys.session("s1")) <= 60_000


async def test_resume_binds_here_and_hands_back_the_outbox_until_written(
    redis: Redis, keys: Keys, scripts: Scripts
):
    old = SessionStore(redis, keys, 60, scripts, "gw-old")
    await old.create("s1", {"gateway_id": "gw-old", "conn_id": "c1", "mode": "one_way",
                            "delivery": "ordered", "next_deliver": "0"})  # fmt: skip
    for i in (0, 1, 2):
        d = await scripts.utterance_fail(
            session_id="s1", utterance_index=i, now_ms=1_000 + i,
            payload={"type": "missing_result", "utterance_index": i}, gap_ms=5_000,
            session_ttl_ms=60_000,
        )  # fmt: skip
        assert d.code == ScriptCode.ANSWERED
    old.written("s1", 0)  # the old gateway wrote 0, then died before writing 1 and 2
    await old.flush_acks()
    new = SessionStore(redis, keys, 60, scripts, "gw-new")
    b = await new.resume("s1", "c2", "")
    assert b.code == ScriptCode.RESUMED and b.old_gateway_id == "gw-old"
    assert [i for i, _ in b.outbox] == [1, 2]
    plan = plan_resume(b.record, b.sent, b.outbox, received={1})  # the client got 1
    assert (plan.next_index, [i for i, _ in plan.send], plan.already) == (2, [2], [1])
    assert plan.next_utterance == 3
    for i in plan.already + [i for i, _ in plan.send]:
        new.written("s1", i)
    await new.unbind("s1", "c1")  # the old connection's close: not its binding any more
    assert await redis.hget(keys.session("s1"), "conn_id") == b"c2"
    assert await redis.hlen(keys.session_outbox("s1")) == 0  # flushed before the unbind
    await new.unbind("s1", "c2")
    assert await redis.hget(keys.session("s1"), "conn_id") is None


async def test_a_long_backlog_of_acks_goes_in_calls_the_script_accepts(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """After an outage one session may owe more acknowledgements than one outbox_ack takes
    (1,024): they go in several calls, none refused for good."""
    box = keys.session_outbox("s1")
    await redis.hset(box, mapping={str(i): "{}" for i in range(2_500)})
    store = SessionStore(redis, keys, 60, scripts, "gw-1")
    for i in range(2_500):
        store.written("s1", i)
    assert await store.flush_acks() is True
    assert await redis.hlen(box) == 0
    await store.close()
