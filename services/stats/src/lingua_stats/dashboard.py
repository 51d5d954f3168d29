"""The operator dashboard (requirement S4): one HTML page plus its script and style sheet.

Everything the page needs is packaged in ``static/`` and read once at start-up; nothing is
fetched from elsewhere (no CDN), and a Content-Security-Policy of ``'self'`` makes the browser
refuse anything else. The page polls ``/api/v1/stats`` (the background snapshot, S1) and
``/api/v1/nodes`` (live, so a node going offline shows within one poll) every 2 s, and falls
back to the live ``/api/v1/pools`` while no snapshot is available. The page names the cells it
shows (``LINGUA_CELLS``, the default first) and, when there are several, lists them in a table.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from lingua_shared.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def render_page(cells: Sequence[str]) -> str:
    """The page, naming ``cells`` (escaped: the page never takes markup from settings)."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{cells_word}}", "cells" if len(cells) > 1 else "cell")
    return page.replace("{{cell}}", html.escape(", ".join(cells)))


def add_dashboard_routes(app: FastAPI, settings: Settings) -> None:
    """``GET /`` (the page) and ``GET /static/{name}`` (its script and style sheet)."""
    page = render_page(settings.cell_map().ordered)
    assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}

    @app.get(
        "/",
        response_class=HTMLResponse,
        include_in_schema=False,
        summary="Operator dashboard",
        description="The dashboard page (S4): nodes, pools, sessions, jobs, errors, exclusions.",
    )
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers=HEADERS)

    @app.get(
        "/static/{name}",
        include_in_schema=False,
        summary="Dashboard asset",
        description="The dashboard's own script and style sheet (packaged, never a CDN).",
    )
    async def static_asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(status_code=404, detail="no such asset")
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)
