"""Stats snapshot figures: build time and GET latency (``lingua_bench.stats_bench`` does the
work; this wrapper keeps ``python scripts/bench_stats.py`` and ``scripts/bench.py`` working).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from lingua_bench.stats_bench import arun as run
from lingua_bench.stats_bench import report

__all__ = ["main", "report", "run"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--gets", type=int, default=2_000)
    ap.add_argument(
        "--redis-url", default=os.environ.get("LINGUA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    args = ap.parse_args()
    report(asyncio.run(run(args.redis_url, args.nodes, args.gets)))


if __name__ == "__main__":
    main()
