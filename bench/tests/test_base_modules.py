"""The baseline benchmark modules run end to end with tiny parameters against the real
servers: each returns its figures in the documented shape, with sane values, and leaves no
key, queue, exchange or process of its own behind. Figures are never compared to targets
here (a test cannot know how loaded the machine is)."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
from typing import Any

import pytest
from redis import Redis

from lingua_bench import floor, peer_celery, select_bench, stats_bench
from lingua_bench.rules import QUICK_SEARCH

pytestmark = pytest.mark.integration


def positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def leftover_keys(redis_url: str) -> list[bytes]:
    client = Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match="*benchbase-*", count=1000))
    finally:
        client.close()


def leftover_bus(amqp_url: str, names: list[str]) -> list[str]:
    """Which of these queues/exchanges still exist (a passive declare fails on a missing one)."""
    import aio_pika

    async def check() -> list[str]:
        conn = await aio_pika.connect(amqp_url, timeout=5)
        found = []
        try:
            for name in names:
                for kind in ("queue", "exchange"):
                    ch = await conn.channel()
                    try:
                        if kind == "queue":
                            await ch.declare_queue(name, passive=True)
                        else:
                            await ch.declare_exchange(name, passive=True)
                        found.append(f"{kind} {name}")
                    except aio_pika.exceptions.ChannelClosed:
                        pass
                    finally:
                        if not ch.is_closed:
                            await ch.close()
        finally:
            await conn.close()
        return found

    return asyncio.run(check())


def my_children() -> list[str]:
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line for line in out.stdout.splitlines() if "lingua_bench" in line]


@pytest.fixture
def captured_prefixes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every prefix a module draws, so the test can look for what it left behind."""
    from lingua_bench import _base_common

    drawn: list[str] = []
    original = _base_common.unique_prefix

    def spy(kind: str = "") -> str:
        drawn.append(original(kind))
        return drawn[-1]

    for module in (floor, peer_celery, select_bench, stats_bench):
        monkeypatch.setattr(module, "unique_prefix", spy)
    return drawn


def test_select_bench_reports_redis_side_time_per_shard_count(
    redis_url: str, captured_prefixes: list[str]
):
    out = select_bench.run(redis_url, samples=30, shards=(1, 2))
    assert out["method"] == "redis_slowlog"
    for n in (1, 2):
        figures = out[f"shards_{n}"]
        assert figures["nodes"] == 256 * n and figures["samples"] == 30
        for policy in ("pack", "spread"):
            f = figures[policy]
            assert positive(f["p50_us"]) and f["p50_us"] <= f["p99_us"] <= f["max_us"]
        # the headline is the worse policy
        assert figures["p99_us"] == max(figures["pack"]["p99_us"], figures["spread"]["p99_us"])
    assert leftover_keys(redis_url) == []
    with pytest.raises(ValueError):
        select_bench.run(redis_url, samples=10, shards=(40, 1))


def test_stats_bench_reports_build_and_get(
    redis_url: str, amqp_url: str, captured_prefixes: list[str]
):
    out = stats_bench.run(redis_url, nodes=60, gets=50, amqp_url=amqp_url)
    assert positive(out["snapshot_build_ms_10000_nodes"])
    assert positive(out["get_p99_ms"])
    assert out["large"]["snapshot_bytes"] > out["small"]["snapshot_bytes"] > 0
    assert leftover_keys(redis_url) == []
    (prefix,) = captured_prefixes
    assert leftover_bus(amqp_url, [f"{prefix}.events", f"{prefix}.dispatcher.events"]) == []


def test_floor_reports_low_load_and_a_rate(
    redis_url: str, amqp_url: str, captured_prefixes: list[str]
):
    out = floor.run(
        duration_s=2.0, redis_url=redis_url, amqp_url=amqp_url, connections=2, search=QUICK_SEARCH
    )
    low = out["low_load"]
    assert positive(low["p50_ms"]) and low["p50_ms"] <= low["p99_ms"]
    assert low["samples"] > 10
    assert out["steps"], "no rate step ran"
    assert out["steps"][0]["rate_per_s"] == float(QUICK_SEARCH.split(":")[0])
    assert all(s["sent"] > 0 for s in out["steps"])
    # the rulebook: a step holds only with every message answered
    assert all(s["received"] == s["sent"] for s in out["steps"] if s["held"])
    # the rate is one a step held, or 0 when none did: never a made-up figure
    held = [s["rate_per_s"] for s in out["steps"] if s["held"]]
    assert out["max_sustained_per_s"] == (max(held) if held else 0)
    assert leftover_keys(redis_url) == []
    (prefix,) = captured_prefixes
    names = [f"{prefix}.{n}" for n in ("events", "deliver", "dlx", "dead", "dispatcher.events")]
    assert leftover_bus(amqp_url, [*names, f"{prefix}.gateway.{prefix}-gw"]) == []
    assert my_children() == []


def test_peer_celery_reports_the_fastest_pool(
    redis_url: str, amqp_url: str, captured_prefixes: list[str]
):
    out = peer_celery.run(redis_url, amqp_url, n=30, pools=("solo",), warmup=5)
    assert out["pool"] == "solo"
    assert positive(out["decision"]["p50_ms"])
    assert out["decision"]["p50_ms"] <= out["decision"]["p99_ms"]
    assert out["pools"]["solo"]["n"] == 30
    by = out["cpu_ms_per_task_by_process"]
    assert set(by) == {"worker", "client", "rabbitmq", "redis"}
    assert out["cpu_ms_per_task"] == round(by["worker"] + by["client"] + by["rabbitmq"], 3)
    assert positive(out["cpu_ms_per_task"])
    assert leftover_keys(redis_url) == []
    (prefix,) = captured_prefixes
    assert leftover_bus(amqp_url, [prefix]) == []
    assert my_children() == []
    with pytest.raises(ValueError):
        peer_celery.run(redis_url, amqp_url, n=5, pools=("gevent",))


def test_celery_broker_url_names_the_default_vhost():
    assert peer_celery.celery_broker_url("amqp://g:g@h:5672/") == "amqp://g:g@h:5672//"
    assert peer_celery.celery_broker_url("amqp://g:g@h:5672") == "amqp://g:g@h:5672//"
    assert peer_celery.celery_broker_url("amqp://g:g@h:5672/vh") == "amqp://g:g@h:5672/vh"
