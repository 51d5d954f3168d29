"""Built-in job handlers: an echo for wiring checks, a timed fake for the simulator, and a
loader for the operator's own handler (``--handler module:attr``).

The agent ships without speech models; these handlers let it run end to end (register,
take jobs, report results) before a real engine is plugged in.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from collections import OrderedDict
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
    exercise the scheduler's retry path (requirement J5) with a realistic error shape
    (``failure_code``: ``INTERNAL_ERROR``, or lingua's ``PROCESSING_ERROR``). With
    ``processing_max_ms`` each job takes a time uniform in ``[processing_ms,
    processing_max_ms]`` instead. With ``withhold_rate`` that share of results repeats the
    session's previous ``text_asr`` on that node, which an agent under the lingua profile
    withholds (as lingua's agent does with a repeated text), so the scheduler meets jobs that
    never answer.
    """

    SESSIONS = 65_536  # sessions whose last text is remembered (least recent forgotten)

    def __init__(
        self,
        processing_ms: float = 50.0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        *,
        processing_max_ms: float | None = None,
        withhold_rate: float = 0.0,
        failure_code: str = ErrorCode.INTERNAL_ERROR,
    ) -> None:
        if processing_ms < 0:
            raise ValueError("processing_ms must be >= 0")
        if processing_max_ms is not None and processing_max_ms < processing_ms:
            raise ValueError("processing_max_ms must be >= processing_ms")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be within 0..1")
        if not 0.0 <= withhold_rate <= 1.0:
            raise ValueError("withhold_rate must be within 0..1")
        self.processing_ms = processing_ms
        self.processing_max_ms = processing_max_ms
        self.failure_rate = failure_rate
        self.withhold_rate = withhold_rate
        self.failure_code = failure_code
        self.repeated = 0  # results given the session's previous text
        self._rng = rng if rng is not None else random.Random()
        self._last: OrderedDict[str, str] = OrderedDict()  # node/session -> last text

    def _delay_ms(self) -> float:
        if self.processing_max_ms is not None:
            return self._rng.uniform(self.processing_ms, self.processing_max_ms)
        return self.processing_ms * self._rng.uniform(0.8, 1.2)

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        delay_s = self._delay_ms() / 1000.0
        await asyncio.sleep(delay_s)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return JobOutcome.failure(self.failure_code, "simulated failure")
        text = f"[sim] asr {job.src_lang} #{job.utterance_index}"
        if self.withhold_rate:
            # per node: the handler is shared, and what the agent compares is its own last text
            key = f"{ctx.node_id}/{job.session_id}"
            previous = self._last.get(key)
            if previous is not None and self._rng.random() < self.withhold_rate:
                text = previous
                self.repeated += 1
            self._last[key] = text
            self._last.move_to_end(key)
            if len(self._last) > self.SESSIONS:
                self._last.popitem(last=False)
        return JobOutcome(
            text_asr=text,
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
