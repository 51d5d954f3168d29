"""Fixtures and hooks more than one suite uses, registered for every suite by the root
``conftest.py`` (``pytest_plugins``): a suite's own fixtures stay in its ``conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import STACK_ENV


@pytest.fixture
def stack_env(redis_url: str, amqp_url: str, bus_prefix: str) -> dict[str, str]:
    """The settings of a stack on the test Redis database and a bus prefix of this run."""
    return {
        "LINGUA_REDIS_URL": redis_url,
        "LINGUA_AMQP_URL": amqp_url,
        "LINGUA_BUS_PREFIX": bus_prefix,
        **STACK_ENV,
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember whether the test itself failed: ``started_stack`` then prints the logs."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call_failed = rep.failed  # type: ignore[attr-defined]
