"""The two processes of the floor pipeline (see :mod:`lingua_bench.floor`): our architecture
with no logic, on the same libraries, settings and bus code as the services.

``server`` is the gateway's shape: a ``websockets`` server (same ``serve`` options) whose read
loop awaits one confirmed, mandatory publish per frame to the events exchange, coalesced with
the other publishes of the same loop tick as the services' job path is
(``Publisher.publish_batched``), and a consumer of its own queue on the deliver exchange that
sends each reply back on the WebSocket. ``worker`` is the dispatcher's shape: a consumer of
the dispatcher's work queue that runs one Lua call on a 1,000-member sorted set and publishes
the reply, confirmed and coalesced likewise, to the deliver exchange keyed by the server's
id. Both start through ``Infra.open`` like every service, print ``ready`` on stdout, and stop
cleanly on SIGTERM.

``python -m lingua_bench._base_floor_procs {server|worker} --prefix P ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import uuid
from typing import Literal

import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, TypeAdapter
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from lingua_shared.bus import consume, declare_queue
from lingua_shared.logs import configure_logging
from lingua_shared.runtime import Infra, install_uvloop
from lingua_shared.settings import Settings

ZSET_MEMBERS = 1_000
# the smallest "select": the least scored member, then move its score (one EVALSHA)
TINY_SELECT = """
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'LIMIT', 0, 1)
redis.call('ZINCRBY', KEYS[1], 1, m[1])
return m[1]
"""
REQUEST_KEY = "job.request"  # bound to the dispatcher's queue by the shared topology


class FloorRequest(BaseModel):
    kind: Literal["floor.request"] = "floor.request"
    id: int
    gateway_id: str
    conn_id: str


class FloorReply(BaseModel):
    kind: Literal["floor.reply"] = "floor.reply"
    id: int
    conn_id: str
    member: str


def settings_for(args: argparse.Namespace, instance_id: str) -> Settings:
    return Settings(
        redis_url=args.redis_url,
        amqp_url=args.amqp_url,
        bus_prefix=args.prefix,
        cell=args.prefix,
        instance_id=instance_id,
        log_level="WARNING",
    )


def zset_key(infra: Infra) -> str:
    return f"{infra.keys.prefix}floor:z"


async def wait_for_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def worker(args: argparse.Namespace) -> None:
    settings = settings_for(args, f"{args.prefix}-worker")
    async with Infra.open(settings) as infra:
        key = zset_key(infra)
        await infra.redis.delete(key)
        await infra.redis.zadd(key, {f"m{i:04d}": 0 for i in range(ZSET_MEMBERS)})
        select = infra.redis.register_script(TINY_SELECT)

        async def handle(req: FloorRequest, message: AbstractIncomingMessage) -> None:
            member = await select(keys=[key])
            await infra.publisher.to_gateway(
                req.gateway_id,
                FloorReply(id=req.id, conn_id=req.conn_id, member=member.decode()),
                batch=True,
            )

        channel = await infra.consume_channel()
        queue = await channel.get_queue(infra.topo.dispatcher_queue, ensure=False)
        tag = await consume(
            queue, TypeAdapter(FloorRequest), handle, name="floor", publisher=infra.publisher
        )
        print("ready", flush=True)
        await wait_for_sigterm()
        with contextlib.suppress(Exception):
            await queue.cancel(tag)


async def server(args: argparse.Namespace) -> None:
    settings = settings_for(args, f"{args.prefix}-gw")
    async with Infra.open(settings) as infra:
        conns: dict[str, ServerConnection] = {}

        async def on_reply(msg: FloorReply, message: AbstractIncomingMessage) -> None:
            ws = conns.get(msg.conn_id)
            if ws is not None:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(orjson.dumps({"id": msg.id, "member": msg.member}).decode())

        channel = await infra.consume_channel()
        queue = await declare_queue(channel, infra.topo.gateway_queue_spec(settings.instance_id))
        await consume(
            queue, TypeAdapter(FloorReply), on_reply, name="deliver", publisher=infra.publisher
        )

        async def handler(ws: ServerConnection) -> None:
            conn_id = uuid.uuid4().hex[:12]
            conns[conn_id] = ws
            try:
                async for raw in ws:
                    frame = orjson.loads(raw)
                    await infra.publisher.event(
                        REQUEST_KEY,
                        FloorRequest(
                            id=int(frame["id"]), gateway_id=settings.instance_id, conn_id=conn_id
                        ),
                        batch=True,
                    )
            except ConnectionClosed:
                pass
            finally:
                conns.pop(conn_id, None)

        async with serve(
            handler,
            "127.0.0.1",
            0,
            max_size=settings.ws_max_frame_bytes,
            compression=None,
            ping_interval=settings.ws_ping_interval_s,
            ping_timeout=settings.ws_ping_timeout_s,
            close_timeout=2,
        ) as ws_server:
            port = next(iter(ws_server.sockets)).getsockname()[1]
            print(f"ready {port}", flush=True)
            await wait_for_sigterm()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("server", "worker"))
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--amqp-url", required=True)
    args = ap.parse_args()
    configure_logging(f"floor-{args.role}", "WARNING")
    install_uvloop()
    asyncio.run(worker(args) if args.role == "worker" else server(args))


if __name__ == "__main__":
    main()
