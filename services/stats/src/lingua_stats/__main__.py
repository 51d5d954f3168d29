"""``lingua-stats [serve]``: run the stats service; ``lingua-stats show``: print the live view.

``show`` reads Redis only (no RabbitMQ) and prints :func:`lingua_shared.poolview.render_text`
once, or every ``--watch`` seconds until interrupted: of every cell of ``LINGUA_CELLS`` (the
default first), each under a line naming the cell, its regions, its fallback ladder and the
sessions it placed in other cells; with one cell, that cell's table alone. Settings come from
``LINGUA_*``; the flags override the Redis URL and pick one cell.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from lingua_shared.cells import CellMap
from lingua_shared.httpserve import serve_app
from lingua_shared.keys import Keys
from lingua_shared.logs import configure_logging
from lingua_shared.poolview import read_nodes, read_pool_view, render_text
from lingua_shared.redisconn import redis_client
from lingua_shared.runtime import install_uvloop, now_ms
from lingua_shared.settings import Settings
from lingua_stats.app import DEFAULT_PORT, create_app
from lingua_stats.cells import each_cell


def serve(settings: Settings) -> None:
    configure_logging("stats", settings.log_level)
    install_uvloop()
    serve_app(
        create_app(settings), settings.host, settings.port or DEFAULT_PORT, settings.drain_timeout_s
    )


def _text(v: bytes | str) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


async def _fallbacks(redis: Redis, keys: Keys) -> str:
    try:
        raw = await redis.hgetall(keys.fallbacks)
    except ResponseError:  # a key of another type: display data, not an outage
        return "unreadable"
    text = [(_text(k), _text(v)) for k, v in raw.items()]
    return " ".join(f"{cell}={n}" for cell, n in sorted(text)) or "none"


async def render_cells(
    redis: Redis, cells: Sequence[str], cell_map: CellMap | None = None, now: int | None = None
) -> str:
    """The live table of each of ``cells``; with several, each under a line naming the cell."""
    cell_map = cell_map or CellMap.single(cells[0])
    now = now_ms() if now is None else now

    async def one(cell: str) -> str:
        keys = Keys(cell)
        text = render_text(
            await read_pool_view(redis, keys, now), await read_nodes(redis, keys, now)
        )
        if len(cells) == 1:
            return text
        head = (
            f"== cell {cell}: regions {','.join(cell_map.regions_of(cell)) or '-'}  "
            f"ladder {'>'.join(cell_map.ladder(cell))}  "
            f"fallbacks out {await _fallbacks(redis, keys)}"
        )
        return f"{head}\n{text}"

    return "\n\n".join(await each_cell(cells, one))


async def show(
    redis_url: str,
    cells: str | Sequence[str],
    watch_s: float | None,
    cluster: bool = False,
    cell_map: CellMap | None = None,
) -> int:
    """Print the live view of ``cells`` once (or every ``watch_s``); returns the process exit
    code. ``cell_map`` gives each cell's regions and ladder (default: one cell, no regions)."""
    redis = redis_client(redis_url, cluster=cluster)
    names = [cells] if isinstance(cells, str) else list(cells)
    try:
        while True:
            try:
                text = await render_cells(redis, names, cell_map)
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
    p_show.add_argument(
        "--cell", default=None, help="only this cell (default: every cell of LINGUA_CELLS)"
    )
    p_show.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        default=None,
        help="repeat every SECONDS until interrupted",
    )
    args = parser.parse_args(argv)
    if args.command == "show":
        cell_map = settings.cell_map()
        cells = [args.cell] if args.cell else cell_map.ordered
        try:
            sys.exit(
                asyncio.run(
                    show(args.redis_url, cells, args.watch, settings.redis_cluster, cell_map)
                )
            )
        except KeyboardInterrupt:
            return
    serve(settings)


if __name__ == "__main__":
    main()
