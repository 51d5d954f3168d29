"""The stats HTTP API against its own OpenAPI document: every route documented, and
property-based requests (schemathesis) that never get a server error.

The app runs in-process with its real lifespan (real Redis and RabbitMQ), so the generated
requests hit the same code paths as production. The operations are read from the app's
routes at run time (its ``/openapi.json`` plus the routes it hides from it, e.g. the
dashboard page), never listed here, so routes added later are covered too.

schemathesis drives ASGI apps from its own event-loop thread: it starts the app's lifespan
the first time it loads the schema and keeps it until told to stop, so the fixture ends it
with ``shutdown_lifespans()`` (otherwise Redis and AMQP connections would live until exit).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, BaseSchema, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import BaseRoute, Mount, Route

from lingua_shared.settings import Settings
from lingua_stats.app import create_app

MAX_EXAMPLES = 25  # per operation and generation mode: bounded, a few seconds in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def make_app(redis_url: str, amqp_url: str, bus_prefix: str) -> FastAPI:
    return create_app(
        Settings(redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test")
    )


def full_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document including the routes it hides from ``/openapi.json``.

    The dashboard page and its assets are ``include_in_schema=False`` (they are not API), but
    they are still served, so they are fuzzed and checked for a description all the same.
    """
    routes: list[BaseRoute] = []
    for route in app.routes:
        if isinstance(route, APIRoute) and not route.include_in_schema:
            route = copy.copy(route)
            route.include_in_schema = True
        routes.append(route)
    return get_openapi(
        title=app.title, version=app.version, openapi_version=app.openapi_version, routes=routes
    )


@dataclass
class StatsSchema:
    schema: BaseSchema  # every operation, hidden ones included
    documented: set[str]  # labels ("GET /api/v1/stats") of those in /openapi.json


@pytest.fixture(scope="module")
def stats_schema(redis_url: str, amqp_url: str, bus_prefix: str) -> Iterator[StatsSchema]:
    """Every operation of a running stats app (its lifespan started by schemathesis)."""
    app = make_app(redis_url, amqp_url, bus_prefix)
    try:
        # through the app's own /openapi.json first: it must serve, and this starts the lifespan
        served = schemathesis.openapi.from_asgi("/openapi.json", app)
        schema = schemathesis.openapi.from_dict(full_openapi(app))
        schema.app = app  # the same in-process ASGI transport as ``from_asgi`` sets up
        documented = {result.ok().label for result in served.get_all_operations()}
        yield StatsSchema(schema, documented)
    finally:
        schemathesis_asgi.shutdown_lifespans()


def test_no_operation_gives_a_server_error(
    stats_schema: StatsSchema, subtests: pytest.Subtests
) -> None:
    """Every operation, with generated valid and invalid parameters: no 5xx, and each response
    matches the status codes, content types and schemas the document declares.

    (Not ``schemathesis.pytest.from_fixture(...).parametrize()``: schemathesis 4.32 renames
    pytest nodes through ``node._nodeid``, which pytest 9 no longer has. One subtest per
    operation and generation mode gives the same per-operation report.)
    """
    operations = [result.ok() for result in stats_schema.schema.get_all_operations()]
    assert operations, "the schema has no operations"
    for operation in operations:
        # A hidden route promises no status codes or schemas; only "no 5xx" applies to it.
        checks = CHECKS if operation.label in stats_schema.documented else [not_a_server_error]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with subtests.test(msg=f"{operation.label} {mode.value}"):
                run_operation(operation, mode, checks)


def run_operation(operation: APIOperation, mode: GenerationMode, checks: list[Any]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=checks)

    try:
        check()
    except Unsatisfiable:
        # An operation without parameters or body has no invalid input to send.
        if mode is not GenerationMode.NEGATIVE:
            raise


def documented_operations(openapi: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    }


def served_operations(app: FastAPI) -> set[tuple[str, str]]:
    """What the app answers, minus FastAPI's own documentation routes and static mounts
    (a directory of files is not an API operation)."""
    docs = {
        app.openapi_url,
        app.docs_url,
        app.redoc_url,
        app.swagger_ui_oauth2_redirect_url,
    }
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route | APIRoute), f"unexpected route type: {route!r}"
        if route.path in docs:
            continue
        # Starlette adds HEAD to every GET by itself; OpenAPI lists only what was declared.
        served |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return served


def auto_summary(route: APIRoute) -> str:
    """The summary FastAPI makes up from the function name when none is given."""
    return route.name.replace("_", " ").title()


async def test_openapi_documents_every_route_with_a_description(
    redis_url: str, amqp_url: str, bus_prefix: str
) -> None:
    app = make_app(redis_url, amqp_url, bus_prefix)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stats") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    openapi = response.json()

    served = served_operations(app)
    documented = documented_operations(openapi)
    # Hidden on purpose (``include_in_schema=False``, e.g. the dashboard's HTML): allowed,
    # as long as they are described like the rest (checked below on the full document).
    hidden = {
        (m, r.path)
        for r in app.routes
        if isinstance(r, APIRoute) and not r.include_in_schema
        for m in r.methods or ()
        if m != "HEAD"
    }
    assert served, "the app serves no routes?"
    assert served - documented - hidden == set(), "served but missing from /openapi.json"
    assert documented - served == set(), "documented but not served"

    # A made-up summary ("Metrics Endpoint") tells an operator nothing: each operation needs a
    # docstring / description, or a summary someone actually wrote.
    full = full_openapi(app)
    assert documented_operations(full) == served
    routes = {
        (m, r.path): r for r in app.routes if isinstance(r, APIRoute) for m in r.methods or ()
    }
    undescribed = []
    for method, path in sorted(served):
        operation = full["paths"][path][method.lower()]
        route = routes.get((method, path))
        written_summary = operation.get("summary") and (
            route is None or operation["summary"] != auto_summary(route)
        )
        if not (operation.get("description") or written_summary):
            undescribed.append(f"{method} {path}")
    assert undescribed == [], "operations without a description or written summary"


async def test_data_routes_declare_the_503_they_answer_when_redis_is_down(
    redis_url: str, amqp_url: str, bus_prefix: str
) -> None:
    openapi = full_openapi(make_app(redis_url, amqp_url, bus_prefix))
    for path in ("/api/v1/pools", "/api/v1/nodes", "/api/v1/stats"):
        declared = openapi["paths"][path]["get"]["responses"]
        assert "503" in declared, path
        schema = declared["503"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorMessage"}, path
