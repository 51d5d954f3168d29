"""Built-in job handlers: an echo for wiring checks, a timed fake for the simulator, and a
loader for the operator's own handler (``--handler module:attr``).

The agent ships without speech models; these handlers let it run end to end (register,
take jobs, report results) before a real engine is plugged in.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from typing import Any

from lingua_node_agent.errors import ConfigError
from lingua_node_agent.jobs import JobContext, JobHandler, JobOutcome
from lingua_shared.protocol import ErrorCode, JobAssign


class EchoHandler:
    """Answers at once with texts that name the job; proves the path, translates nothing."""

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        return JobOutcome(
            text_asr=f"[echo] {len(job.audio)} base64 chars of {job.audio_format}",
            text_translated=f"[echo] {job.src_lang}->{job.tgt_lang} #{job.utterance_index}",
        )


class SimulatedHandler:
    """Waits ``processing_ms`` (with +-20 % spread) and fails with ``failure_rate``.

    The spread keeps thousands of simulated jobs from finishing in lock-step; the failures
    exercise the scheduler's retry path (MISSION J5) with a realistic error shape.
    """

    def __init__(
        self,
        processing_ms: float = 50.0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if processing_ms < 0:
            raise ValueError("processing_ms must be >= 0")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be within 0..1")
        self.processing_ms = processing_ms
        self.failure_rate = failure_rate
        self._rng = rng if rng is not None else random.Random()

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        delay_s = self.processing_ms * self._rng.uniform(0.8, 1.2) / 1000.0
        await asyncio.sleep(delay_s)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return JobOutcome.failure(ErrorCode.INTERNAL_ERROR, "simulated failure")
        return JobOutcome(
            text_asr=f"[sim] asr {job.src_lang} #{job.utterance_index}",
            text_translated=f"[sim] {job.src_lang}->{job.tgt_lang} #{job.utterance_index}",
            processing_time_ms=round(delay_s * 1000.0, 3),
        )


def load_handler(spec: str) -> JobHandler:
    """Import ``"package.module:attr"``; ``attr`` is a handler, or a class/factory making one.

    Called before connecting, so a typo fails the start-up, not the first job.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler must look like 'package.module:attr', got {spec!r}")
    try:
        target: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load handler {spec!r}: {exc}") from None
    handler = target() if callable(target) and not hasattr(target, "handle") else target
    if isinstance(handler, type):
        handler = handler()
    if not callable(getattr(handler, "handle", None)):
        raise ConfigError(f"handler {spec!r} has no handle(job, ctx) method")
    return handler
