"""A job record outlives every lease and timer on it: ``LINGUA_JOB_TTL_S`` shorter than a
job's whole life (max_attempts x (no_node_wait + ack + deadline + the 1 s rescue)) is refused
at start with a message naming the settings, instead of records expiring under their leases.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lingua_shared.settings import Settings


def test_the_defaults_hold_a_whole_job_life() -> None:
    s = Settings()
    assert s.job_ttl_s * 1000 >= s.max_attempts * (
        s.no_node_wait_ms + s.ack_timeout_ms + s.job_deadline_ms + 1_000
    )


def test_a_job_ttl_shorter_than_a_job_life_is_refused_with_the_figure() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(job_ttl_s=60, job_deadline_ms=30_000, ack_timeout_ms=3_000, max_attempts=3,
                 no_node_wait_ms=2_000)  # fmt: skip
    text = str(exc.value)
    assert "LINGUA_JOB_TTL_S=60" in text and "108000 ms" in text and "at least 108" in text
    assert Settings(job_ttl_s=108, job_deadline_ms=30_000, ack_timeout_ms=3_000).job_ttl_s == 108
