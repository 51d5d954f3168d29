"""``lingua-gateway``: run one gateway replica (settings from ``LINGUA_*``)."""

from __future__ import annotations

import asyncio

from lingua_gateway.app import serve_forever
from lingua_shared.logs import configure_logging
from lingua_shared.runtime import install_uvloop
from lingua_shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    install_uvloop()
    asyncio.run(serve_forever(settings))


if __name__ == "__main__":
    main()
