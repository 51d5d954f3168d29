"""The dashboard's routes (S4) without the lifespan: the page and its packaged assets, served
with a same-origin-only Content-Security-Policy and kept out of the OpenAPI schema.
(The page itself runs in a real Chromium in ``tests/integration/test_dashboard.py``.)"""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from lingua_shared.settings import Settings
from lingua_stats.dashboard import STATIC_DIR, add_dashboard_routes, render_page


def make_app(cell: str = "main") -> FastAPI:
    app = FastAPI()
    add_dashboard_routes(app, Settings(cell=cell))
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stats")


async def test_page_and_assets_are_served_same_origin_only():
    async with client(make_app()) as c:
        page = await c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            r = await c.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
            assert r.content == (STATIC_DIR / name).read_bytes()
        for bad in ("index.html", "nope.js", "..%2Fdashboard.py", "%2E%2E%2Fapp.py"):
            assert (await c.get(f"/static/{bad}")).status_code == 404


async def test_nothing_refers_outside_the_service():
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "innerHTML" not in text and "document.write" not in text, name


async def test_cell_name_is_escaped_and_routes_stay_out_of_the_schema():
    # Settings only take cell labels (a-z 0-9 _ . -); the page escapes the names all the same
    page = render_page(['<script>alert("x")</script>'])
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    app = make_app(cell="eu-1")
    async with client(app) as c:
        text = (await c.get("/")).text
    assert "cell eu-1</span>" in text and "{{" not in text
    assert app.openapi()["paths"] == {}
    routes = [r for r in app.routes if getattr(r, "path", "") in ("/", "/static/{name}")]
    assert len(routes) == 2
    assert all(r.summary and r.description for r in routes)  # type: ignore[attr-defined]
