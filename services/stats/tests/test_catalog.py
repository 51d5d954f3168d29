"""The catalog cache (requirement S2) against a local model hub that misbehaves on demand.

The hub is a tiny hand-written HTTP/1.1 responder on 127.0.0.1 (no aiohttp here), switched
between good answers and every failure the real hub could produce: slow, 500, garbage, the
wrong JSON shape, an endless body, and not listening at all. Each failure must leave the last
good catalog in place, flagged ``ok=False`` with a readable reason, and never escape the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from lingua_stats.catalog import DISABLED_ERROR, CatalogCache, CatalogError, parse_catalog
from lingua_stats.snapshot_model import CatalogView

INTERVAL_S = 0.05
TIMEOUT_S = 0.2
MAX_BYTES = 20_000
ENTRIES = [
    {"service_id": "asr-whisper", "type": "asr", "languages": ["en", "zh"], "token": "secret"},
    {"service_id": "mt-nllb", "type": "semantic", "version": "1.2", "languages": ["en", "ja"]},
]
KEPT = [
    {"service_id": "asr-whisper", "type": "asr", "languages": ["en", "zh"]},
    {"service_id": "mt-nllb", "type": "semantic", "version": "1.2", "languages": ["en", "ja"]},
]


class Hub:
    """A model hub whose behaviour the test switches through ``mode``."""

    def __init__(self) -> None:
        self.mode = "list"
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Hanging responses wait on this rather than being cancelled: asyncio's stream server
        # logs an error for a cancelled handler task.
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/catalog"

    async def start(self) -> None:
        # the same port again after stop(), so the cache's URL stays valid across an outage
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening (connections are then refused) and drop requests in flight."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._closing.set()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            await self._respond(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the cache gave up on us (timeout, size limit): that is the point
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "list":
            await self._send(writer, 200, orjson.dumps(ENTRIES))
        elif mode == "object":
            await self._send(writer, 200, orjson.dumps({"services": ENTRIES, "total": 2}))
        elif mode == "items":
            await self._send(writer, 200, orjson.dumps({"items": ENTRIES[:1]}))
        elif mode == "slow":
            await self._hang()  # far past the timeout
        elif mode == "error":
            await self._send(writer, 500, b'{"detail": "hub exploded"}')
        elif mode == "garbage":
            await self._send(writer, 200, b"\x00\xff<html>not json at all")
        elif mode == "shape":
            await self._send(writer, 200, orjson.dumps({"catalog": {"asr": 1}}))
        elif mode == "declared_oversize":
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BYTES * 100}\r\n\r\n"
            writer.write(head.encode())
            await writer.drain()
            await self._hang()  # the header alone must be enough to refuse it
        elif mode == "endless":
            # no Content-Length, a body that never ends: only a streaming size cap stops it
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Connection: close\r\n\r\n[")
            while not self._closing.is_set():
                writer.write(b'{"service_id": "x"},' * 100)
                await writer.drain()
                await asyncio.sleep(0)
        else:
            raise AssertionError(mode)

    async def _hang(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), 30)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    server = Hub()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def cache(hub: Hub) -> AsyncIterator[CatalogCache]:
    catalog = CatalogCache(hub.url, INTERVAL_S, TIMEOUT_S, max_bytes=MAX_BYTES)
    try:
        yield catalog
    finally:
        await catalog.stop()


async def until(check: Callable[[CatalogView], bool], cache: CatalogCache) -> CatalogView:
    """Poll the view until ``check`` holds (the refresh runs in the background)."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        view = cache.view()
        if check(view):
            return view
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened; last view: {cache.view()!r}")


async def test_good_list_then_every_failure_keeps_the_last_good_copy(
    hub: Hub, cache: CatalogCache
) -> None:
    await cache.start()
    good = await until(lambda v: v.ok, cache)
    assert good.url == hub.url and good.error is None
    assert good.services == KEPT  # unknown keys ("token") dropped
    assert good.fetched_at_ms is not None and good.last_attempt_ms is not None

    failures = {
        "error": "HTTP 500",
        "garbage": "response is not JSON",
        "shape": "unexpected JSON shape",
        "slow": f"timeout after {TIMEOUT_S:g}s",
        "declared_oversize": f"response larger than {MAX_BYTES} bytes",
        "endless": f"response larger than {MAX_BYTES} bytes",
    }
    for mode, reason in failures.items():
        hub.mode = mode
        before = cache.view().last_attempt_ms or 0
        bad = await until(
            lambda v, reason=reason, before=before: (
                not v.ok and reason in (v.error or "") and (v.last_attempt_ms or 0) > before
            ),
            cache,
        )
        assert bad.services == KEPT, mode
        assert bad.fetched_at_ms == good.fetched_at_ms, mode
        assert bad.url == hub.url

    # recovery: the next good answer replaces the stale copy and clears the error
    hub.mode = "object"
    recovered = await until(lambda v: v.ok, cache)
    assert recovered.error is None and recovered.services == KEPT
    assert recovered.fetched_at_ms is not None and good.fetched_at_ms is not None
    assert recovered.fetched_at_ms >= good.fetched_at_ms
    assert cache._task is not None and not cache._task.done()  # no failure escaped the loop


async def test_hub_down_then_back(hub: Hub, cache: CatalogCache) -> None:
    hub.mode = "items"
    await cache.start()
    good = await until(lambda v: v.ok, cache)
    assert good.services == KEPT[:1]

    await hub.stop()  # connection refused from now on
    down = await until(lambda v: not v.ok, cache)
    assert down.error == "connection failed (hub down or unreachable)"
    assert down.services == KEPT[:1] and down.fetched_at_ms == good.fetched_at_ms

    hub.mode = "list"
    await hub.start()
    back = await until(lambda v: v.ok and len(v.services) == 2, cache)
    assert back.error is None


async def test_start_returns_at_once_and_stop_cancels_a_slow_fetch(
    hub: Hub, cache: CatalogCache
) -> None:
    hub.mode = "slow"
    began = time.perf_counter()
    await cache.start()
    assert time.perf_counter() - began < 0.05  # the first fetch does not block startup (P5)
    first = cache.view()
    assert not first.ok and first.services == [] and first.error is None
    await until(lambda v: hub.requests >= 1, cache)  # a fetch is now hanging on the hub

    task = cache._task
    assert task is not None
    began = time.perf_counter()
    await cache.stop()
    assert time.perf_counter() - began < 0.1
    assert task.cancelled()
    assert cache._task is None and cache._client is None
    await cache.stop()  # idempotent


async def test_first_fetch_failing_reports_it_with_no_services(hub: Hub, cache: CatalogCache):
    hub.mode = "error"
    await cache.start()
    view = await until(lambda v: v.error is not None, cache)
    assert view == CatalogView(
        url=hub.url, ok=False, last_attempt_ms=view.last_attempt_ms, error="HTTP 500"
    )


async def test_view_is_a_copy(hub: Hub, cache: CatalogCache) -> None:
    await cache.start()
    view = await until(lambda v: v.ok, cache)
    view.services.clear()
    assert cache.view().services == KEPT


async def test_disabled_without_url() -> None:
    cache = CatalogCache(None, INTERVAL_S, TIMEOUT_S)
    await cache.start()
    assert cache._task is None
    assert cache.view() == CatalogView(url=None, ok=False, error=DISABLED_ERROR)
    assert await cache.refresh() is False
    await cache.stop()


def test_parse_catalog_shapes_and_caps() -> None:
    assert parse_catalog([]) == []
    assert parse_catalog({"services": []}) == []
    assert parse_catalog({"items": [{"name": "n"}]}) == [{"name": "n"}]
    entries = [{"service_id": f"s{i}", "nested": {"a": 1}} for i in range(10)]
    assert parse_catalog(entries, max_entries=3) == [{"service_id": f"s{i}"} for i in range(3)]
    # odd entries are skipped; nested values dropped; strings and lists bounded
    mixed = [1, "x", None, {"other": 1}, {"name": "a" * 500, "languages": ["en", {"x": 1}] * 80}]
    (entry,) = parse_catalog(mixed)
    assert entry["name"] == "a" * 200
    assert entry["languages"] == ["en"] * 50  # 100 kept, then the objects dropped
    for bad in (42, "text", None, {"services": "nope"}, [1, 2, 3], [{"unknown": 1}]):
        with pytest.raises(CatalogError, match="unexpected JSON shape"):
            parse_catalog(bad)
