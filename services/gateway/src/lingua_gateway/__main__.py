"""``lingua-gateway``: run one gateway replica (settings from ``LINGUA_*``)."""

from __future__ import annotations

import asyncio
import sys

from lingua_gateway.app import create_app, run
from lingua_shared.auth import AuthConfigError, TokenVerifier
from lingua_shared.logs import configure_logging, get_logger
from lingua_shared.runtime import install_uvloop
from lingua_shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    try:
        if settings.auth_enabled:
            TokenVerifier(settings)  # fail fast: auth on but no usable key
    except (AuthConfigError, ValueError, OSError) as exc:
        get_logger("lingua_gateway").error("gateway.auth_misconfigured", error=str(exc))
        print(f"lingua-gateway: {exc}", file=sys.stderr)
        sys.exit(2)
    install_uvloop()
    asyncio.run(run(create_app(settings)))


if __name__ == "__main__":
    main()
