"""The JSON log lines: one per event with its fields, the level respected, an exception's
traceback carried, and other handlers (pytest's capture) still seeing every record."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from lingua_shared.logs import FlowLogger, JsonFormatter


@pytest.fixture
def captured():
    logger = logging.getLogger(f"test.logs.{id(object())}")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("svc"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield FlowLogger(logger), out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict]:
    return [orjson.loads(x) for x in out.getvalue().splitlines()]


def test_an_event_is_one_json_line_with_its_fields(captured) -> None:
    log, out = captured
    log.info("job.done", job_id="j-1", attempt=2)
    (doc,) = lines(out)
    assert doc["event"] == "job.done" and doc["level"] == "info" and doc["service"] == "svc"
    assert doc["job_id"] == "j-1" and doc["attempt"] == 2
    assert "exc" not in doc


def test_below_the_level_nothing_is_written(captured) -> None:
    log, out = captured
    log.debug("job.noise", job_id="j-1")
    log.warning("job.late", job_id="j-2")
    assert [d["event"] for d in lines(out)] == ["job.late"]


def test_an_exception_carries_its_traceback(captured) -> None:
    log, out = captured
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("job.crashed", job_id="j-3")
    (doc,) = lines(out)
    assert doc["level"] == "error" and "ValueError: boom" in doc["exc"]


def test_records_reach_the_other_handlers_too(caplog: pytest.LogCaptureFixture) -> None:
    log = FlowLogger(logging.getLogger("test.logs.caplog"))
    with caplog.at_level(logging.INFO, logger="test.logs.caplog"):
        log.info("session.opened", session_id="s-1")
    (record,) = [r for r in caplog.records if r.name == "test.logs.caplog"]
    assert record.getMessage() == "session.opened"
    assert record.fields == {"session_id": "s-1"}
