"""The model hub's service catalog, refreshed in the background (requirement S2, P5).

The hub is an outside HTTP endpoint we do not control: it may be slow, down, or answer with
anything. So the catalog is fetched by one background task, every ``interval_s``, with a hard
``timeout_s`` deadline over the whole request, and the rest of the service only ever reads
the last copy through :meth:`CatalogCache.view`. Nothing the hub does can raise out of this
module or delay a caller: a failed refresh keeps the last good ``services`` and reports
``ok=False`` with a short ``error``.

What we keep from the hub is deliberately small and flat (a few known keys per entry, a
bounded number of entries, a bounded response size), because it is only shown on the
dashboard and in the stats snapshot; it never decides anything in scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson

from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms
from lingua_stats.snapshot_model import CatalogView

log = get_logger(__name__)

#: The keys of a catalog entry worth showing; everything else the hub sends is dropped.
KNOWN_KEYS = ("service_id", "id", "name", "type", "version", "languages", "description")
#: The envelope keys under which an object response may carry its list of entries.
LIST_KEYS = ("services", "items")
DEFAULT_MAX_ENTRIES = 1_000
DEFAULT_MAX_BYTES = 2_000_000
MAX_STRING = 200  # characters kept of any string value
MAX_LIST = 100  # items kept of any list value (e.g. languages)
DISABLED_ERROR = "no catalog configured"


class CatalogError(Exception):
    """A refresh failed for a reason worth showing to an operator (the message is short)."""


class CatalogCache:
    """Background-refreshed copy of the hub's service list; :meth:`view` never does I/O.

    ``url=None`` disables the cache: no task runs and :meth:`view` says so.
    """

    def __init__(
        self,
        url: str | None,
        interval_s: float,
        timeout_s: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.url = url
        self.interval_s = max(0.01, interval_s)
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._view = CatalogView(url=url, ok=False, error=None if url else DISABLED_ERROR)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the refresh task and return at once; the first fetch runs in the background.

        Returning before the first fetch is the point: a slow hub must not delay the
        service's startup (P5). Calling it twice, or with no URL, does nothing.
        """
        if self.url is None or self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="stats.catalog_refresh")

    async def stop(self) -> None:
        """Cancel the refresh task (even mid-request) and close the HTTP client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def view(self) -> CatalogView:
        """The catalog as last fetched; a copy, so a reader cannot alter the cache."""
        return self._view.model_copy(deep=True)

    # -- refreshing ----------------------------------------------------------------------

    async def _run(self) -> None:
        # Building an HTTP client loads the CA bundle (~0.1-0.3 s of blocking work), so it
        # happens here, off the event loop, and not in start().
        try:
            ssl_context = await asyncio.to_thread(httpx.create_ssl_context)
        except Exception as exc:  # a broken CA bundle must not kill the task silently
            self._failed(now_ms(), f"TLS setup failed: {exc.__class__.__name__}")
            return
        self._client = httpx.AsyncClient(
            verify=ssl_context,
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=True,
            headers={"accept": "application/json"},
        )
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> bool:
        """Fetch once and update the view; returns whether it succeeded. Never raises.

        (Cancellation still propagates, so :meth:`stop` can interrupt a slow fetch.)
        """
        if self.url is None:
            return False
        started = now_ms()
        try:
            async with asyncio.timeout(self.timeout_s):
                services = await self._fetch(self.url)
        except TimeoutError:
            return self._failed(started, f"timeout after {self.timeout_s:g}s")
        except CatalogError as exc:
            return self._failed(started, str(exc))
        except httpx.HTTPError as exc:
            return self._failed(started, _describe_http_error(exc, self.timeout_s))
        except Exception as exc:  # the hub must never break the stats service
            return self._failed(started, f"unexpected error: {exc.__class__.__name__}")
        self._view = CatalogView(
            url=self.url,
            ok=True,
            fetched_at_ms=now_ms(),
            last_attempt_ms=started,
            error=None,
            services=services,
        )
        log.info(
            "stats.catalog_refreshed",
            url=self.url,
            services=len(services),
            took_ms=now_ms() - started,
        )
        return True

    def _failed(self, started: int, error: str) -> bool:
        """Keep the last good services; only the status fields change."""
        previous = self._view
        self._view = previous.model_copy(
            update={"ok": False, "error": error, "last_attempt_ms": started}
        )
        log.warning(
            "stats.catalog_failed",
            url=self.url,
            error=error,
            kept_services=len(previous.services),
            last_good_ms=previous.fetched_at_ms,
        )
        return False

    async def _fetch(self, url: str) -> list[dict[str, object]]:
        if self._client is None:
            raise CatalogError("not started")
        async with self._client.stream("GET", url) as response:
            if not response.is_success:
                raise CatalogError(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise CatalogError(f"response larger than {self.max_bytes} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise CatalogError(f"response larger than {self.max_bytes} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CatalogError("response is not JSON") from exc
        return parse_catalog(document, self.max_entries)


def parse_catalog(document: Any, max_entries: int = DEFAULT_MAX_ENTRIES) -> list[dict[str, object]]:
    """The entries of a hub response, reduced to :data:`KNOWN_KEYS`; raises CatalogError.

    Accepted: a list of objects, or an object with such a list under ``services`` or
    ``items``. Entries that are not objects or carry none of the known keys are skipped (one
    odd entry should not make the whole catalog stale), but a non-empty list with no usable
    entry at all is the wrong shape.
    """
    if isinstance(document, dict):
        raw = next((document[k] for k in LIST_KEYS if isinstance(document.get(k), list)), None)
        if raw is None:
            raise CatalogError("unexpected JSON shape: object without a services/items list")
    elif isinstance(document, list):
        raw = document
    else:
        raise CatalogError(f"unexpected JSON shape: {type(document).__name__}")
    entries: list[dict[str, object]] = []
    for item in raw:
        if len(entries) >= max_entries:
            break
        if not isinstance(item, dict):
            continue
        entry = {k: v for k in KNOWN_KEYS if (v := _clean(item.get(k))) is not None}
        if entry:
            entries.append(entry)
    if raw and not entries:
        raise CatalogError("unexpected JSON shape: no entry is an object with known keys")
    return entries


def _clean(value: Any) -> object | None:
    """A display-safe copy of one value: bounded scalars and flat lists; else dropped."""
    if isinstance(value, str):
        return value[:MAX_STRING]
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list):
        items = [v[:MAX_STRING] if isinstance(v, str) else v for v in value[:MAX_LIST]]
        return [v for v in items if isinstance(v, str | bool | int | float)]
    return None


def _describe_http_error(exc: httpx.HTTPError, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed (hub down or unreachable)"
    return f"HTTP error: {exc.__class__.__name__}"
