"""Opening a session: the WebSocket, ``session_init``, and the wait for the ack.

The gateway sends nothing useful before ``session_init_ack`` (it carries the session id that
every later message needs), so the handshake is a bounded wait for exactly that, with an
``error`` reply turned into :class:`SessionRejected`. Each failure names its cause, because
"could not connect" has four different fixes: the URL, the server, the network, the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from lingua_client.config import DEFAULT_URL, SessionConfig
from lingua_client.errors import (
    ClientError,
    ClientTimeout,
    ConnectError,
    ConnectionLost,
    SessionRejected,
)
from lingua_client.frames import session_init
from lingua_client.session import ClientSession
from lingua_shared.protocol import CloseCode, ErrorMessage
from lingua_shared.protocol.session import SessionInitAck

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a translation_result with TTS audio can be large


async def open_session(
    url: str = DEFAULT_URL, config: SessionConfig | None = None
) -> ClientSession:
    """Connect and open a session; the caller must ``await session.close()``."""
    cfg = config or SessionConfig()
    cfg.validate()
    try:
        ws = await connect(
            url,
            open_timeout=cfg.open_timeout_s,
            close_timeout=cfg.close_timeout_s,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            user_agent_header=f"lingua-client/{cfg.client_version}",
            additional_headers={"Authorization": f"Bearer {cfg.token}"} if cfg.token else None,
        )
    except InvalidURI as exc:
        raise ConnectError(f"invalid gateway URL: {exc}") from None
    except TimeoutError:
        raise ClientTimeout("WebSocket handshake", cfg.open_timeout_s, url) from None
    except (OSError, InvalidHandshake) as exc:
        raise ConnectError(f"cannot connect to {url}: {exc}") from None
    try:
        await ws.send(json.dumps(session_init(cfg), separators=(",", ":")))
        ack = await _wait_ack(ws, cfg)
    except BaseException:
        await ws.close(CloseCode.NORMAL, "session_init failed")
        raise
    log.info("session opened", extra={"session_id": ack.session_id, "trace_id": cfg.trace_id})
    return ClientSession(ws, cfg, ack)


async def _wait_ack(ws: ClientConnection, cfg: SessionConfig) -> SessionInitAck:
    try:
        async with asyncio.timeout(cfg.init_timeout_s):
            while True:
                raw = await ws.recv()
                data = json.loads(raw) if isinstance(raw, str) else None
                mtype = data.get("type") if isinstance(data, dict) else None
                if mtype == "error":
                    err = ErrorMessage.model_validate(data)
                    raise SessionRejected(err.code, err.message, err.details)
                if mtype == "session_init_ack":
                    return _check_ack(SessionInitAck.model_validate(data), cfg)
                log.debug("ignoring a frame before session_init_ack", extra={"type": mtype})
    except TimeoutError:
        raise ClientTimeout("session_init_ack", cfg.init_timeout_s) from None
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        raise ConnectionLost(code, exc.rcvd.reason if exc.rcvd else "") from None
    except (ValueError, ValidationError) as exc:
        raise SessionRejected(
            "INVALID_MESSAGE", f"unreadable reply to session_init: {exc}"
        ) from None


def _check_ack(ack: SessionInitAck, cfg: SessionConfig) -> SessionInitAck:
    """Refuse an ack that names another audio format: the nodes would be told to decode our
    PCM16 as that format. (The field's model default is "opus", so only an ack that actually
    states a format is checked; an ack without it is taken as agreeing.)"""
    if "negotiated_audio_format" in ack.model_fields_set:
        got = ack.negotiated_audio_format.lower()
        if got != cfg.audio_format:
            raise SessionRejected(
                "UNSUPPORTED_FEATURE",
                f"the gateway negotiated audio format {got!r}, but this client sends "
                f"{cfg.audio_format!r}",
            )
    return ack


@asynccontextmanager
async def connect_session(
    url: str = DEFAULT_URL, config: SessionConfig | None = None
) -> AsyncIterator[ClientSession]:
    """``async with connect_session(url, SessionConfig.one_way("en", "zh")) as s: ...``

    On a normal exit the session is closed with the handshake (which may raise
    :class:`ClientTimeout`); when the body raises, it is closed best-effort and the body's
    exception is the one that propagates.
    """
    session = await open_session(url, config)
    try:
        yield session
    except BaseException:
        with suppress(ClientError, OSError):
            await session.close("client error")
        raise
    await session.close()
