"""Run an ASGI service the way all our HTTP services run: uvicorn, our JSON logs, and a
clean exit code.

uvicorn re-raises SIGTERM after a graceful shutdown, so the process would end "killed by
signal 15" even when every delivery was finished; orchestrators and our tests read exit 0 as
"drained cleanly", so the captured signal is dropped once shutdown has begun.
"""

from __future__ import annotations

from types import FrameType
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve_app(app: Any, host: str, port: int, graceful_timeout_s: float) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,
        lifespan="on",
    )
    _Server(config).run()
