"""``NodeAgent``: one node's life on the wire — connect, register, heartbeat, serve, drain.

The lifecycle follows the gateway's contract (docs/protocol.md §2.6, rule N6): every
(re)connection starts with ``node_register`` under the same node id, which is how a node that
lost its socket comes back inside the TTL grace with its pools intact; losses other than our own
shutdown are retried with full-jitter backoff; a shutdown drains (refuse new jobs, finish the
running ones, announce ``draining`` in heartbeats) and then closes with 1000, the one close
that tells the scheduler to forget the node at once.

Under the lingua profile (``AgentConfig.profile == "lingua"``) the lifecycle is lingua's own
agent's instead, defects included: no register timeout, ``error`` and ``node_control``
ignored, one reconnect 5 s after the first close and never another one, no drain, and a
shutdown that closes without a status code (the gateway reads 1005).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.protocol import State
from websockets.uri import parse_uri

from lingua_node_agent.backoff import Backoff
from lingua_node_agent.capabilities import (
    agent_version,
    build_register,
    language_capabilities,
    self_check,
)
from lingua_node_agent.config import MAX_FRAME_BYTES, AgentConfig, check_profile
from lingua_node_agent.errors import ConfigError, RegistrationRejected
from lingua_node_agent.handlers import EchoHandler
from lingua_node_agent.heartbeat import HeartbeatPacer
from lingua_node_agent.job_runner import JobRunner
from lingua_node_agent.jobs import JobHandler
from lingua_node_agent.jsonlog import NodeLogger
from lingua_node_agent.messages import GatewayMessages
from lingua_node_agent.resources import PsutilSampler, ResourceSampler
from lingua_node_agent.state import NodeIdStore
from lingua_node_agent.ticker import HeartbeatTicker
from lingua_shared.protocol import CloseCode, Hardware, WireModel


async def close_without_status(ws: ClientConnection) -> None:
    """Close with an empty close frame: no status code, which the peer reads as 1005. This
    is what lingua's agent sends (``ws.close()`` of Node's ``ws``). websockets' ``close``
    hands its code to ``protocol.send_close``, which sends exactly that frame for ``None``,
    and still runs the closing handshake (waits for the peer's close and the TCP close)."""
    await ws.close(cast(int, None))


class NodeAgent(GatewayMessages):
    """A node agent: ``await run()`` until :meth:`stop` (or a permanent rejection).

    Observable state for callers and tests: ``node_id``, ``registered`` (an Event set while
    registered on the current connection), ``connected``, ``status``, ``draining`` and the
    counters ``connections``, ``reconnects``, ``registrations``, ``heartbeats_sent``,
    ``last_close_code``, ``close_codes`` (every close code seen, in order), ``gateway_url``;
    ``jobs`` is the :class:`JobRunner` with its job counters and ``heartbeats`` the
    :class:`HeartbeatPacer`.
    Pass a shared ``ticker`` to run many agents on one heartbeat timer (the simulator does).
    """

    def __init__(
        self,
        config: AgentConfig,
        handler: JobHandler | None = None,
        *,
        ticker: HeartbeatTicker | None = None,
        resources: ResourceSampler | None = None,
        hardware: Hardware | None = None,
        rng: random.Random | None = None,
        jitter_heartbeats: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        self._urls = config.gateway_urls()
        if not self._urls:
            raise ConfigError("no gateway URL given")
        for url in self._urls:
            try:
                parse_uri(url)
            except InvalidURI as exc:
                raise ConfigError(f"invalid gateway URL: {exc}") from None
        self._url_index = 0
        self.config = config
        check_profile(config)
        self.lingua = config.lingua
        self._store = NodeIdStore(config.state_file) if config.state_file else None
        self._saved_id = self._store.load() if self._store else None
        self.node_id: str | None = config.node_id or self._saved_id
        self._register = build_register(config, hardware)
        self.capabilities = self_check(self._register.model_copy(update={"node_id": self.node_id}))
        self.log = NodeLogger(logger or logging.getLogger(__name__), lambda: self.node_id)
        handler = handler if handler is not None else EchoHandler()
        self.jobs = JobRunner(handler, config.capacity, self._send, self.log, lingua=self.lingua)
        self._own_ticker = ticker is None
        self._ticker = ticker if ticker is not None else HeartbeatTicker()
        self._rng = rng if rng is not None else random.Random()
        self.heartbeats = HeartbeatPacer(
            self._ticker,
            resources if resources is not None else PsutilSampler(),
            self._send,
            lambda: self.jobs.running_jobs,
            config.capacity,
            self._register.installed_services,
            self._register.capability_by_type,
            self._rng,
            jitter=jitter_heartbeats,
            language_capabilities=language_capabilities(config) if self.lingua else None,
            gpu_percent_default=0.0 if self.lingua else None,
        )
        self._backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, self._rng)
        self._ua = f"lingua-node-agent/{agent_version()}"

        self.registered = asyncio.Event()
        self.stopped = asyncio.Event()
        self.connected = False
        self.draining = False
        self.status = "idle"
        self.connections = self.reconnects = self.registrations = 0
        self.last_close_code: int | None = None
        self.close_codes: list[int | None] = []
        self.heartbeat_interval_s = config.effective_heartbeat_interval_ms() / 1000.0
        # lingua profile: its one reconnect is spent (then no socket close is survived)
        self.reconnect_spent = False

        self._ws: ClientConnection | None = None
        self._started = False
        self._stop_requested = False
        self._wakeup = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._ack_deadline: float | None = None

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect and serve until stopped; raises :class:`RegistrationRejected` if refused."""
        if self._started:
            raise RuntimeError("NodeAgent.run() may only be called once")
        self._started = True
        ticker_task = asyncio.create_task(self._ticker.run()) if self._own_ticker else None
        try:
            while not self._stop_requested:
                try:
                    await self._session()
                except RegistrationRejected:
                    raise
                except (OSError, TimeoutError, WebSocketException) as exc:
                    self.log.warning("connection failed", extra={"error": repr(exc)})
                except Exception:
                    self.log.exception("unexpected error in the connection; reconnecting")
                if self._stop_requested:
                    break
                if self.lingua and self.reconnect_spent:
                    await self._stay_disconnected()
                    break
                # next replica in the list: a draining gateway (1012) refuses us anyway
                self._url_index = (self._url_index + 1) % len(self._urls)
                if self.lingua:
                    self.reconnect_spent = True
                    delay = self.config.reconnect_delay_s
                else:
                    delay = self._next_delay()
                self.reconnects += 1
                self.status = "backoff"
                self.log.info(
                    "reconnecting",
                    extra={"delay_s": round(delay, 3), "attempt": self._backoff.attempt},
                )
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
        finally:
            self._stop_requested = True
            await self.jobs.abort("node agent stopped")
            await self.heartbeats.close()
            for task in (self._closer, ticker_task):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self.status = "stopped"
            self.stopped.set()

    async def _stay_disconnected(self) -> None:
        """lingua's reconnect defect: after its one reconnect (made or failed) a closed socket
        is never reopened; the process lives on, disconnected, until it is stopped."""
        self.status = "disconnected"
        self.log.warning(
            "lingua profile: no more reconnects until restarted (as lingua's agent)",
            extra={"reconnects": self.reconnects},
        )
        await self._wakeup.wait()

    def stop(self, drain: bool = True, reason: str = "stop requested") -> None:
        """Ask :meth:`run` to end. Safe from a signal handler; calling again with
        ``drain=False`` skips what is left of a drain (jobs are aborted, close is immediate)."""
        if self._stop_requested and (drain or self._closer is None or self._closer.done()):
            return
        first = not self._stop_requested
        self._stop_requested = True
        drain = drain and not self.lingua  # lingua's agent just closes its socket
        self.jobs.accepting = False
        self.draining = self.heartbeats.draining = self.draining or drain
        self._wakeup.set()
        if first:
            self.log.info("stopping", extra={"drain": drain, "reason": reason})
        if self._closer is not None:
            self._closer.cancel()
        ws = self._ws
        if ws is not None:
            self._closer = asyncio.get_running_loop().create_task(self._close(ws, drain))

    async def _close(self, ws: ClientConnection, drain: bool) -> None:
        """Drain (when asked), then close with 1000 so the scheduler drops the node at once.
        The lingua profile closes at once without a status code; its jobs end silently."""
        if self.lingua:
            await close_without_status(ws)
            return
        if drain:
            self.status = "draining"
            await self.heartbeats.send_now()  # announce "draining" now, not a beat later
            if not await self.jobs.wait_idle(self.config.drain_timeout_s):
                self.log.warning(
                    "drain timeout, aborting jobs", extra={"running": self.jobs.running_jobs}
                )
        await self.jobs.abort("node is shutting down")
        await ws.close(CloseCode.NORMAL, "node stopping")

    @property
    def gateway_url(self) -> str:
        """The gateway URL of the current (or next) connection."""
        return self._urls[self._url_index]

    def _next_delay(self) -> float:
        if self.last_close_code == CloseCode.REPLACED:
            # Another process holds our node id; coming back fast would only evict it (and
            # then us) in a loop. Wait the longest delay and let the operator see the log.
            return self._backoff.cap_s
        return self._backoff.next_delay()

    # ----------------------------------------------------------------- connection

    async def _session(self) -> None:
        cfg = self.config
        self.status = "connecting"
        ws = await connect(
            self.gateway_url,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            open_timeout=cfg.open_timeout_s,
            # lingua's agent (Node's ws) never pings; it only answers the gateway's pings
            ping_interval=None if self.lingua else cfg.ping_interval_s,
            ping_timeout=None if self.lingua else cfg.ping_timeout_s,
            close_timeout=cfg.close_timeout_s,
            user_agent_header=self._ua,
            additional_headers={"Authorization": f"Bearer {cfg.token}"} if cfg.token else None,
        )
        self._ws = ws
        self.connected = True
        self.connections += 1
        try:
            if self._stop_requested:
                return
            await self._send_register()
            if self.lingua and self.registrations and self.node_id is not None:
                # lingua starts beating when the socket opens: on a reconnect it knows its id
                # already, so its first beat goes out before this connection's ack.
                await self.heartbeats.start(self.node_id, self.heartbeat_interval_s)
            await self._receive_loop(ws)
        except ConnectionClosed:
            pass  # the close code is read below, whichever side closed
        finally:
            self._disconnected(ws)
            if self.lingua:
                await close_without_status(ws)
            else:
                await ws.close(
                    CloseCode.NORMAL if self._stop_requested else CloseCode.RETRY,
                    "node agent closing",
                )
            self.last_close_code = ws.close_code
            self.close_codes.append(ws.close_code)
            self.log.log(
                logging.ERROR if ws.close_code == CloseCode.REPLACED else logging.INFO,
                "connection closed",
                extra={"code": ws.close_code, "reason": ws.close_reason or ""},
            )

    def _disconnected(self, ws: ClientConnection) -> None:
        if self._ws is ws:
            self._ws = None
        self.connected = False
        self.registered.clear()
        self._ack_deadline = None
        self.heartbeats.stop()

    async def _receive_loop(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while ws.state is State.OPEN:
            if self._ack_deadline is None:
                raw = await ws.recv()
            else:
                try:
                    async with asyncio.timeout(max(0.0, self._ack_deadline - loop.time())):
                        raw = await ws.recv()
                except TimeoutError:
                    self.log.warning("no node_register_ack in time; reconnecting")
                    await ws.close(CloseCode.RETRY, "register timeout")
                    return
            await self._dispatch(ws, raw)

    # ----------------------------------------------------------------- sending

    async def _send(self, msg: WireModel | dict[str, Any]) -> bool:
        """Send on the current connection; ``False`` (never an exception) when there is none.
        A dict is sent as is (the heartbeat pacer pre-serialises its constant parts)."""
        ws = self._ws
        if ws is None:
            return False
        data = msg if isinstance(msg, dict) else msg.to_wire()
        try:
            await ws.send(json.dumps(data, separators=(",", ":"), ensure_ascii=False))
        except ConnectionClosed:
            return False
        return True

    @property
    def heartbeats_sent(self) -> int:
        return self.heartbeats.sent
