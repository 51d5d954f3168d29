"""Job handlers for node agents run as separate processes by the integration tests
(``lingua-node-agent run --handler tests.integration.agent_handlers:Slow``)."""

from __future__ import annotations

import asyncio
import os

from lingua_node_agent import JobContext, JobOutcome
from lingua_shared.protocol import JobAssign


class Slow:
    """Takes ``LINGUA_TEST_JOB_MS`` (default 1000) per job and says so in its answer, so a
    test can tell which node answered and stop the agent while jobs are in flight."""

    def __init__(self) -> None:
        self.seconds = float(os.environ.get("LINGUA_TEST_JOB_MS", "1000")) / 1000

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        await asyncio.sleep(self.seconds)
        return JobOutcome(
            text_asr=f"slow asr #{job.utterance_index}",
            text_translated=f"slow #{job.utterance_index}",
        )
