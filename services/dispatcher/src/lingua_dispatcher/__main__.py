"""``lingua-dispatcher``: run the dispatcher (settings from ``LINGUA_*``)."""

from __future__ import annotations

from lingua_dispatcher.app import DEFAULT_PORT, create_app
from lingua_shared.httpserve import serve_app
from lingua_shared.logs import configure_logging
from lingua_shared.runtime import install_uvloop
from lingua_shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging("dispatcher", settings.log_level)
    install_uvloop()
    serve_app(
        create_app(settings), settings.host, settings.port or DEFAULT_PORT, settings.drain_timeout_s
    )


if __name__ == "__main__":
    main()
