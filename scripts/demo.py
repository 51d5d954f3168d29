"""``make demo``: the main job, the whole round trip.

Starts the stack (unless it is already up) and N simulated nodes, waits until every one of
them (and one real agent) is registered, in its pools and schedulable, prints the nodes and
pools as Redis holds them; then a client streams an audio file (shipped in the repo) as a
session through the gateway and prints each result as it arrives with its latency; then the
agent leaves gracefully and its pool entries are gone at once. The stack and the simulated
nodes keep running (stop with ``make down``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.poolview import read_nodes, read_pool_view, render_text
from lingua_shared.redisconn import redis_client
from lingua_shared.runtime import now_ms
from lingua_shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def wait_schedulable(
    redis: Redis, cells: list[Keys], count: int, timeout: float
) -> dict[str, list]:
    """Each cell's nodes, once ``count`` are schedulable in all the cells together."""
    deadline = time.monotonic() + timeout
    nodes: list = []
    while time.monotonic() < deadline:
        by_cell = {k.cell: await read_nodes(redis, k, now_ms()) for k in cells}
        nodes = [n for listed in by_cell.values() for n in listed]
        if sum(1 for n in nodes if n.schedulable) >= count:
            return by_cell
        await asyncio.sleep(0.25)
    raise TimeoutError(
        f"only {sum(1 for n in nodes if n.schedulable)} of {count} nodes became "
        f"schedulable in {timeout:.0f}s; see .run/logs/"
    )


async def demo(count: int) -> int:
    settings = Settings()
    cell_map = settings.cell_map()
    cells = [Keys(c) for c in cell_map.ordered]
    keys = Keys(cell_map.cell_of("eu"))  # the agent's region's cell
    redis = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    agent_id = "demo-agent-1"
    # One real agent beside the simulated ones: it will leave gracefully at the end.
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lingua_node_agent",
            "run",
            "--node-id",
            agent_id,
            "--gateway",
            "ws://127.0.0.1:5010/ws/node",
            "--region",
            "eu",
            "--gpu-tier",
            "a100",
            "--asr-langs",
            "en,ja,zh",
            "--semantic-langs",
            "en,ja,zh",
            "--lang-sets",
            "en,ja,zh",
            "--heartbeat-interval-ms",
            "1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(ROOT / ".run" / "logs" / "demo-agent.log", "ab"),
    )
    try:
        t0 = time.monotonic()
        by_cell = await wait_schedulable(redis, cells, count + 1, 60)
        print(
            f"\n{count} simulated nodes and 1 agent registered and schedulable in "
            f"{time.monotonic() - t0:.1f}s. Nodes and pools, read live from Redis:\n"
        )
        for k in cells:
            if len(cells) > 1:
                print(f"== cell {k.cell}")
            print(render_text(await read_pool_view(redis, k, now_ms()), by_cell[k.cell]))

        print("\nA client streams the demo audio as a session zh -> en through the gateway;")
        print("each line is one utterance's result as it arrives, with its latency:\n")
        client_rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "lingua_client",
                "stream",
                "--url",
                "ws://127.0.0.1:5010/ws/session",
                "--src",
                "zh",
                "--tgt",
                "en",
            ]
        )

        pools_before = {m.decode() for m in await redis.smembers(keys.node_pools(agent_id))}
        print(
            f"\n{agent_id} leaves gracefully (SIGTERM: drain, clean close); "
            f"it was in {', '.join(sorted(pools_before))}"
        )
        agent.terminate()
        agent.wait(15)
        t1 = time.monotonic()
        while time.monotonic() - t1 < 5 and await redis.exists(keys.node(agent_id)):
            await asyncio.sleep(0.05)
        gone = not await redis.exists(keys.node(agent_id))
        left = [s for s in pools_before if await redis.zscore(keys.pool(s), agent_id) is not None]
        print(
            f"  after its goodbye: record {'gone' if gone else 'STILL THERE'}, "
            f"pool entries left: {len(left)} (agent exit code {agent.returncode})"
        )
        print("\nThe stack keeps running with the simulated nodes heartbeating:")
        print("  stats       http://127.0.0.1:5040/api/v1/pools")
        print("  live nodes  http://127.0.0.1:5040/api/v1/nodes")
        print("  watch       .venv/bin/python -m lingua_stats show --watch 2")
        print("  stop        make down")
        return 0 if gone and not left and client_rc == 0 else 1
    finally:
        if agent.poll() is None:
            agent.kill()
        await redis.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=12)
    args = ap.parse_args()
    env = {**os.environ}
    rc = subprocess.call(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), "up", "--nodes", str(args.nodes)],
        env=env,
    )
    if rc != 0:
        return rc
    return asyncio.run(demo(args.nodes))


if __name__ == "__main__":
    sys.exit(main())
