"""``lingua-stats [serve]``: run the stats service; ``lingua-stats show``: print the live view.

``show`` reads Redis only (no RabbitMQ) and prints :func:`lingua_shared.poolview.render_text`
once, or every ``--watch`` seconds until interrupted. Settings come from ``LINGUA_*``; the
flags override the Redis URL and the cell.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.exceptions import RedisError

from lingua_shared.httpserve import serve_app
from lingua_shared.keys import Keys
from lingua_shared.logs import configure_logging
from lingua_shared.poolview import read_nodes, read_pool_view, render_text
from lingua_shared.redisconn import redis_client
from lingua_shared.runtime import install_uvloop, now_ms
from lingua_shared.settings import Settings
from lingua_stats.app import DEFAULT_PORT, create_app


def serve(settings: Settings) -> None:
    configure_logging("stats", settings.log_level)
    install_uvloop()
    serve_app(
        create_app(settings), settings.host, settings.port or DEFAULT_PORT, settings.drain_timeout_s
    )


async def show(redis_url: str, cell: str, watch_s: float | None, cluster: bool = False) -> int:
    """Print the live view once (or every ``watch_s``); returns the process exit code."""
    redis = redis_client(redis_url, cluster=cluster)
    keys = Keys(cell)
    try:
        while True:
            now = now_ms()
            try:
                text = render_text(
                    await read_pool_view(redis, keys, now), await read_nodes(redis, keys, now)
                )
            except RedisError as exc:
                # a watch survives a Redis outage; a one-shot show reports it and fails
                print(f"lingua-stats: Redis at {redis_url} did not answer: {exc}", file=sys.stderr)
                if not watch_s:
                    return 1
            else:
                if watch_s and sys.stdout.isatty():
                    print("\x1b[2J\x1b[H", end="")
                print(text, flush=True)
            if not watch_s:
                return 0
            await asyncio.sleep(watch_s)
            if not sys.stdout.isatty():
                print(flush=True)
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="lingua-stats", description="Serve the stats API, or show the live nodes and pools."
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the HTTP service (the default)")
    p_show = sub.add_parser("show", help="print the live nodes and pools")
    p_show.add_argument("--redis-url", default=settings.redis_url)
    p_show.add_argument("--cell", default=settings.cell)
    p_show.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        default=None,
        help="repeat every SECONDS until interrupted",
    )
    args = parser.parse_args(argv)
    if args.command == "show":
        try:
            sys.exit(
                asyncio.run(show(args.redis_url, args.cell, args.watch, settings.redis_cluster))
            )
        except KeyboardInterrupt:
            return
    serve(settings)


if __name__ == "__main__":
    main()
