"""``CachedScript``: a NOSCRIPT never reaches the caller, even when the script cache is emptied
between redis-py's reload and its second EVALSHA (the race the fault suite's S3 hit).

No ``SCRIPT FLUSH`` here: the shared test Redis serves other suites; the emptied cache is
simulated (every EVALSHA answers NOSCRIPT) or met with a script Redis has never seen."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from lingua_shared.scripts import CachedScript


def source() -> str:
    return f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1]}}"


class AlwaysFlushed(Redis):
    """Every EVALSHA finds the cache empty, as if SCRIPT FLUSH ran just before it."""

    async def evalsha(self, sha, numkeys, *keys_and_args):  # type: ignore[no-untyped-def,override]
        raise NoScriptError("No matching script. Please use EVAL.")


async def test_noscript_falls_back_to_eval(redis_url: str):
    client = AlwaysFlushed.from_url(redis_url)
    try:
        assert await CachedScript(client, source())(keys=["k"], args=["v"]) == [b"k", b"v"]
        with pytest.raises(NoScriptError):  # redis-py's own fallback loses this race
            await AsyncScript(client, source())(keys=["k"], args=["v"])
    finally:
        await client.aclose()


async def test_a_script_redis_never_saw_runs_and_is_cached(redis_url: str):
    client = Redis.from_url(redis_url)
    try:
        script = CachedScript(client, source())
        assert await client.script_exists(script.sha) == [False]
        assert await script(keys=["a"], args=["1"]) == [b"a", b"1"]
        assert await client.script_exists(script.sha) == [True]
    finally:
        await client.aclose()
