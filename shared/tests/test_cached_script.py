"""``CachedScript``: a NOSCRIPT never reaches the caller, even when the script cache is emptied
between redis-py's reload and its second EVALSHA (the race the fault suite's S3 hit).

No ``SCRIPT FLUSH`` here: the shared test Redis serves other suites; the emptied cache is
simulated (every EVALSHA answers NOSCRIPT) or met with a script Redis has never seen."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from lingua_shared.scripts import CachedScript
from lingua_shared.testing import ON_CLUSTER, redis_for_tests


def source() -> str:
    return f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1]}}"


def always_flushed(base: type) -> Any:
    class AlwaysFlushed(base):  # type: ignore[misc,valid-type]
        """Every EVALSHA finds the cache empty, as if SCRIPT FLUSH ran just before it."""

        async def evalsha(self, sha, numkeys, *keys_and_args):  # type: ignore[no-untyped-def]
            raise NoScriptError("No matching script. Please use EVAL.")

    return AlwaysFlushed


async def test_noscript_falls_back_to_eval(redis_url: str):
    client = always_flushed(RedisCluster if ON_CLUSTER else Redis).from_url(redis_url)
    try:
        assert await CachedScript(client, source())(keys=["k"], args=["v"]) == [b"k", b"v"]
        with pytest.raises(NoScriptError):  # redis-py's own fallback loses this race
            await AsyncScript(client, source())(keys=["k"], args=["v"])
    finally:
        await client.aclose()


async def test_a_script_redis_never_saw_runs_and_is_cached(redis_url: str):
    client = redis_for_tests(redis_url)
    try:
        script = CachedScript(client, source())
        # on a cluster, the EVAL caches the script on the master of the key's slot only
        await client.ping()  # (the cluster client learns the slots on its first command)

        async def cached() -> bool:
            if not ON_CLUSTER:
                return bool((await client.script_exists(script.sha))[0])
            node = client.get_node_from_key("a")  # type: ignore[attr-defined]
            reply = await client.execute_command("SCRIPT EXISTS", script.sha, target_nodes=node)
            return bool(reply[0])

        assert not await cached()
        assert await script(keys=["a"], args=["1"]) == [b"a", b"1"]
        assert await cached()
    finally:
        await client.aclose()
