"""Backoff, the shared heartbeat ticker, language-set parsing and the self-check."""

from __future__ import annotations

import asyncio
import random

import pytest

from lingua_node_agent import AgentConfig, Backoff, ConfigError, HeartbeatTicker, NodeAgent
from lingua_node_agent.config import parse_lang_sets


def test_backoff_full_jitter_grows_to_the_cap_and_resets():
    backoff = Backoff(0.25, 10.0, random.Random(1))
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        assert 0.0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings[:4] == [0.25, 0.5, 1.0, 2.0] and ceilings[-1] == 10.0
    delays = [Backoff(0.25, 10.0, random.Random(s)).next_delay() for s in range(50)]
    assert len(set(delays)) == 50  # jittered, not lock-step
    backoff.reset()
    assert backoff.ceiling() == 0.25


async def test_one_ticker_paces_many_subscriptions():
    ticker = HeartbeatTicker(resolution_s=0.005)
    counts = [0] * 50

    def make(i: int):
        def beat() -> None:
            counts[i] += 1

        return beat

    task = asyncio.create_task(ticker.run())
    try:
        subs = [ticker.schedule(make(i), 0.05, first_delay_s=i * 0.001) for i in range(50)]
        await asyncio.sleep(0.33)
        subs[0].cancel()
        before = counts[0]
        await asyncio.sleep(0.12)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert counts[0] == before  # cancelled: no more beats
    assert all(5 <= c <= 10 for c in counts[1:]), counts


def test_lang_set_syntax():
    assert parse_lang_sets("en,zh; en, ja ,zh;") == [["en", "zh"], ["en", "ja", "zh"]]
    with pytest.raises(ConfigError):
        parse_lang_sets(" ; ")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lang_sets": [["en"]]}, "two distinct"),
        ({"asr_langs": ["en", "zh"], "semantic_langs": ["de", "fr"]}, "fewer than two"),
        ({"capacity": 0}, "max_concurrent_jobs"),
        ({"heartbeat_interval_ms": 10}, "heartbeat_interval_ms"),
        ({"region": "Not A Label!"}, "region"),
        ({"node_id": "bad id with spaces"}, "node_id"),
        ({"gateway": "ws://"}, "gateway"),
    ],
)
def test_agent_refuses_invalid_capabilities_before_connecting(settings, message):
    with pytest.raises(ConfigError, match=message):
        NodeAgent(AgentConfig(**settings))
