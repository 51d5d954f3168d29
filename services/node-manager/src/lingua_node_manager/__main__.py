"""``lingua-node-manager``: run the node-manager (settings from ``LINGUA_*``)."""

from __future__ import annotations

import uvicorn

from lingua_shared.logs import configure_logging
from lingua_shared.runtime import install_uvloop
from lingua_shared.settings import Settings

from lingua_node_manager.app import DEFAULT_PORT, create_app


def main() -> None:
    settings = Settings()
    configure_logging("node-manager", settings.log_level)
    install_uvloop()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port or DEFAULT_PORT,
                log_config=None, access_log=False, timeout_graceful_shutdown=settings.drain_timeout_s)


if __name__ == "__main__":
    main()
