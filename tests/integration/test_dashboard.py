"""The operator dashboard (requirement S4) in a real headless Chromium (Debian's, driven by
Playwright) against the real stats process and Redis: the page loads without console errors
or outside requests, shows the nodes registered by the real Lua scripts with both meanings of
online (N5), and follows them live when one goes offline gracefully and another drops.

Set ``LINGUA_UPDATE_SCREENSHOT=1`` to refresh ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Request, Route, async_playwright, expect

from lingua_dispatcher.stats_recorder import StatsRecorder
from lingua_shared.devstack import ServiceProcess, free_port
from lingua_shared.keys import Keys
from lingua_shared.protocol.capabilities import derive_capabilities
from lingua_shared.protocol.node import CapabilityByType, LanguageCapabilities, NodeRegister
from lingua_shared.scripts import Scripts
from lingua_stats import dashboard

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
TTL_MS = 60_000
SERVICES = {"asr": ["de", "en", "ja", "zh"], "semantic": ["de", "en", "ja", "zh"]}
# node id -> (region, gpu tier, lang sets, capacity, running, reserved)
NODES = {
    "gpu-eu-1": ("eu", "a100", [["en", "zh"], ["en", "ja", "zh"]], 4, 2, 1),
    "gpu-eu-2": ("eu", "a100", [["en", "zh"]], 4, 0, 1),
    "gpu-us-1": ("us", "t4", [["de", "en"]], 2, 0, 0),
}
HOSTILE = "<img src=x onerror=window.__pwned=1> & <b>bold</b>"


def wall_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def stats_service(redis, stack_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    """The stats service as a real process, on the ``scripts`` fixture's cell ("test")."""
    env = {
        **stack_env,
        "LINGUA_CELL": "test",
        "LINGUA_STATS_INTERVAL_S": "0.5",
        "LINGUA_INSTANCE_ID": "stats-dash",
    }
    proc = ServiceProcess("stats", "lingua_stats", free_port(), env, tmp_path / "stats.log")
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, f"stats did not exit cleanly: {code}\n{proc.log_path.read_text()}"


async def register(redis, keys: Keys, scripts: Scripts) -> None:
    now = wall_ms()
    for node_id, (region, gpu, lang_sets, capacity, running, reserved) in NODES.items():
        reg = await scripts.register_node_v2(
            node_id=node_id,
            now_ms=now,
            ttl_ms=TTL_MS,
            region=region,
            gpu_tier=gpu,
            lang_sets=lang_sets,
            capacity=capacity,
            services=SERVICES,
            gateway_id="gw-dash",
            conn_id=f"c-{node_id}",
        )
        assert reg.created
        # slots as select_node.lua (reserved) and job_ack.lua (running) count them
        await redis.hset(keys.node(node_id), mapping={"running": running, "reserved": reserved})
        beat = await scripts.heartbeat_with_pool_assign(
            node_id=node_id,
            conn_id=f"c-{node_id}",
            gateway_id="gw-dash",
            now_ms=now + 1,
        )
        assert beat.alive


async def seed_activity(redis, keys: Keys) -> None:
    """The last half minute of jobs, latencies, errors and selection statistics, as the
    dispatcher's recorder and select_node.lua write them, so every section has data."""
    recorder = StatsRecorder(redis, keys)
    now = wall_ms()
    for ago in range(30, 0, -1):
        ts = now - ago * 1000
        for i in range(3 + (ago * 7) % 5):
            recorder.dispatched(2 + (i * ago) % 9, ts)
            recorder.done("zh", "en", 180 + 12 * ((ago + i) % 7), ts)
        if ago % 9 == 0:
            recorder.failed("NO_AVAILABLE_NODE", "no pool covers de->ja", ts_ms=ts)
    recorder.failed("JOB_TIMEOUT", HOSTILE, session_id="s-1", job_id="j-1", ts_ms=now - 1500)
    assert await recorder.flush()
    await redis.hset(keys.exclusions, mapping={"no_free_slot": 7, "not_connected": 3})
    await redis.hset(keys.unserved, mapping={"de:ja": 4})
    await redis.zadd(keys.sessions_active, {"s-1": now, "s-2": now})


@pytest.fixture
def chromium() -> str:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no {CHROMIUM}: run scripts/bootstrap.sh as root, or apt-get install chromium")
    return CHROMIUM


async def test_dashboard_shows_nodes_and_follows_them_offline(
    chromium: str, redis, keys: Keys, scripts: Scripts, stats_service: ServiceProcess, tmp_path
):
    await register(redis, keys, scripts)
    await seed_activity(redis, keys)
    base = stats_service.base_url
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            problems.append(f"console {msg.type}: {msg.text}")

    def on_request(req: Request) -> None:
        if not req.url.startswith(base + "/") and not req.url.startswith("data:"):
            problems.append(f"outside request: {req.url}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            page.on("request", on_request)
            response = await page.goto(base + "/")
            assert response is not None and response.ok
            assert "default-src 'none'" in (await response.header_value("content-security-policy"))

            rows = page.locator('[data-testid="node-row"]')
            live = page.locator(
                '[data-testid="node-row"][data-connected="yes"][data-schedulable="yes"]'
            )
            await expect(live).to_have_count(3, timeout=10_000)
            assert sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.nodeId)")) == sorted(
                NODES
            )
            await expect(page.get_by_test_id("count-schedulable")).to_have_text("3")
            await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
            cells = page.locator('[data-testid="pool-cell"]')
            await expect(cells).to_have_count(3)
            assert sorted(await cells.evaluate_all("cs => cs.map(c => c.dataset.pool)")) == [
                "de_en:us:t4",
                "en_ja_zh:eu:a100",
                "en_zh:eu:a100",
            ]
            await expect(page.get_by_test_id("count-sessions")).to_have_text("2")
            # text from outside is shown as text, never parsed as HTML
            hostile = page.locator('[data-testid="error-row"][data-code="JOB_TIMEOUT"] td.msg')
            await expect(hostile).to_have_text(HOSTILE)
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("#error-rows img, #error-rows b").count() == 0
            await expect(
                page.locator('[data-testid="exclusion-row"][data-key="no_free_slot"]')
            ).to_contain_text("7")
            await expect(
                page.locator('[data-testid="unserved-row"][data-key="de:ja"]')
            ).to_contain_text("4")

            # graceful offline: the node's data is gone, so is its row (and its only pool)
            gone = await scripts.node_offline(node_id="gpu-us-1", mode="graceful", now_ms=wall_ms())
            assert gone.code == 1
            await expect(page.locator('[data-node-id="gpu-us-1"]')).to_have_count(0, timeout=5_000)
            await expect(cells).to_have_count(2, timeout=5_000)

            # abnormal drop: still registered (TTL alive), neither connected nor schedulable
            dropped = await scripts.node_offline(
                node_id="gpu-eu-2", mode="dropped", conn_id="c-gpu-eu-2", now_ms=wall_ms()
            )
            assert dropped.code == 1
            row = page.locator('[data-testid="node-row"][data-node-id="gpu-eu-2"]')
            await expect(row).to_have_attribute("data-connected", "no", timeout=5_000)
            await expect(row).to_have_attribute("data-schedulable", "no")
            await expect(row.get_by_test_id("node-connected")).to_have_text("no")
            await expect(row.get_by_test_id("node-schedulable")).to_have_text("no")
            await expect(rows).to_have_count(2)
            await expect(page.get_by_test_id("count-schedulable")).to_have_text("1")

            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            if not DOCS_SCREENSHOT.exists() or os.environ.get("LINGUA_UPDATE_SCREENSHOT") == "1":
                DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, DOCS_SCREENSHOT)
        finally:
            await browser.close()
    assert problems == []


async def test_dashboard_shows_pools_of_subtagged_language_codes(
    chromium: str, redis, keys: Keys, scripts: Scripts, stats_service: ServiceProcess
):
    """Regression (issue: a ``pt-br`` node froze the dashboard): nodes declaring ``pt-BR``,
    ``zh-Hant``, ``sr-Latn``, ``yue`` and ``es-419`` as lingua's agents may spell them are
    pooled under the lowercased codes (docs/protocol.md §2.3), and the page shows their pools
    and rows from the snapshot. Before the fix no snapshot was ever built, so the stats
    process never became ready."""
    now = wall_ms()
    declared = {
        "gpu-br": ["en", "pt-BR"],
        "gpu-hant": ["zh_Hant", "yue", "sr-Latn"],
        "gpu-419": ["es-419", "en"],
    }
    for node_id, langs in declared.items():
        caps = derive_capabilities(
            NodeRegister(
                node_id=node_id,
                region="eu",
                gpu_tier="a100",
                capability_by_type=[
                    CapabilityByType(type="asr", ready=True),
                    CapabilityByType(type="semantic", ready=True),
                ],
                language_capabilities=LanguageCapabilities(
                    asr_languages=langs, semantic_languages=langs
                ),
            )
        )
        reg = await scripts.register_node_v2(
            node_id=node_id,
            now_ms=now,
            ttl_ms=TTL_MS,
            region=caps.region,
            gpu_tier=caps.gpu_tier,
            lang_sets=caps.lang_sets,
            capacity=caps.capacity,
            services=caps.services,
            gateway_id="gw-dash",
            conn_id=f"c-{node_id}",
        )
        assert reg.created
        beat = await scripts.heartbeat_with_pool_assign(
            node_id=node_id, conn_id=f"c-{node_id}", gateway_id="gw-dash", now_ms=now + 1
        )
        assert beat.alive
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            await page.goto(stats_service.base_url + "/")
            await expect(page.get_by_test_id("status")).to_have_attribute(
                "data-state", "live", timeout=10_000
            )
            await expect(page.get_by_test_id("count-schedulable")).to_have_text("3")
            cells = page.locator('[data-testid="pool-cell"]')
            await expect(cells).to_have_count(3)
            assert sorted(await cells.evaluate_all("cs => cs.map(c => c.dataset.pool)")) == [
                "en_es-419:eu:a100",
                "en_pt-br:eu:a100",
                "sr-latn_yue_zh-hant:eu:a100",
            ]
            heads = page.locator("#heatmap th[scope=row]")
            assert sorted(await heads.all_inner_texts()) == [
                "en+es-419",
                "en+pt-br",
                "sr-latn+yue+zh-hant",
            ]
            live = page.locator('[data-testid="node-row"][data-schedulable="yes"]')
            await expect(live).to_have_count(3)
            row = page.locator('[data-testid="node-row"][data-node-id="gpu-hant"]')
            await expect(row).to_contain_text("sr-latn+yue+zh-hant")
        finally:
            await browser.close()
    assert problems == []


async def test_dashboard_waits_for_data_and_tolerates_sparse_payloads(chromium: str):
    """Stubbed answers (no service): every API down -> "waiting for data"; a snapshot with
    most fields missing and no live views -> rendered from what is there, no script error."""
    static = Path(dashboard.__file__).parent / "static"
    answers: dict[str, tuple[int, object]] = {
        "/api/v1/stats": (503, {"code": "SCHEDULER_DEPENDENCY_DOWN"}),
        "/api/v1/nodes": (503, {}),
        "/api/v1/pools": (503, {}),
    }
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

    async def serve(route: Route) -> None:
        path = urlsplit(route.request.url).path
        if path in answers:
            status, body = answers[path]
            await route.fulfill(status=status, json=body)
        elif path in ("/", "/static/app.js", "/static/style.css"):
            file = static / ("index.html" if path == "/" else path.rsplit("/", 1)[1])
            await route.fulfill(body=file.read_bytes(), content_type=types[file.suffix])
        else:
            await route.fulfill(status=404, body="")

    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and "Failed to load resource" not in msg.text:  # the stubbed 503s
            errors.append(f"console error: {msg.text}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", on_console)
            await page.route("http://dash.test/**", serve)
            await page.goto("http://dash.test/")
            status = page.get_by_test_id("status")
            await expect(status).to_contain_text("waiting for data")
            await expect(status).to_have_attribute("data-state", "waiting")

            answers["/api/v1/stats"] = (
                200,
                {
                    "generated_at_ms": wall_ms(),
                    "node_list": [{"node_id": "sparse-1", "connected": True}],
                    "pools": [{"langset": ["en", "zh"], "region": "eu"}],
                    "series": [{"ts": 1, "jobs": 2}, {"ts": 2}],
                    "recent_errors": [{"code": "X"}],
                    "catalog": {"url": "http://hub.invalid/catalog", "ok": False},
                },
            )
            await expect(status).to_have_attribute("data-state", "live", timeout=5_000)
            row = page.locator('[data-testid="node-row"][data-node-id="sparse-1"]')
            await expect(row).to_have_attribute("data-schedulable", "no")
            await expect(page.locator('[data-testid="pool-cell"]')).to_have_count(1)
            await expect(page.get_by_test_id("catalog-status")).to_contain_text("unavailable")
        finally:
            await browser.close()
    assert errors == []
