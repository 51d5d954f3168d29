"""What the gateway's connections are given: small interfaces, and the bundles that pass them.

A connection never sees the whole gateway. A node connection gets :class:`NodeDeps`, a session
connection :class:`SessionDeps`, both built once by the app (``app.py``) and faked in tests.
This module imports nothing from the app or the connection modules, so no import cycle runs
through it: the connections are known here only by the :class:`HeldNode` and
:class:`HeldSession` interfaces that the app's delivery router and the registry need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel
from websockets.asyncio.server import ServerConnection

from lingua_gateway.metrics import Metrics
from lingua_shared.cells import CellMap
from lingua_shared.events import Beat, NodeRegisterEvent, RegisterReply, ToSession
from lingua_shared.settings import Settings


class EventPublisher(Protocol):
    """Publishes to the events exchange (:meth:`lingua_shared.bus.Publisher.event`)."""

    async def event(
        self, routing_key: str, model: BaseModel, *, batch: bool = False, **kw: Any
    ) -> None: ...


class BeatSink(Protocol):
    """Takes a node's heartbeat for the next batch (``coalescer.HeartbeatCoalescer``)."""

    def add(self, beat: Beat) -> None: ...

    def begin_registration(self) -> int:
        """A registration began (its node's beats count from its answer); returns a token."""
        ...

    def end_registration(self, token: int) -> None: ...

    def forget(self, node_id: str, conn_id: str) -> None:
        """A connection ended: drop its pending beat."""
        ...


class RegisterCall(Protocol):
    """Registers a node through node-manager and returns its reply
    (:class:`~lingua_gateway.register_rpc.RegisterRpc`)."""

    def __call__(
        self, event: NodeRegisterEvent, correlation_id: str
    ) -> Awaitable[RegisterReply]: ...


class SessionRecords(Protocol):
    """The session record in Redis (:class:`~lingua_gateway.session_store.SessionStore`)."""

    async def create(
        self, session_id: str, fields: dict[str, str], cell: str | None = None
    ) -> None:
        """Write a new session's record in ``cell`` (None: the default one)."""

    async def touch(self, session_id: str, fields: dict[str, str]) -> bool: ...

    async def unbind(self, session_id: str, conn_id: str) -> None: ...

    async def resume(
        self, session_id: str, conn_id: str, client: str, cell: str | None = None
    ) -> Any:
        """Bind an existing session of ``cell`` to this connection (a ``session_bind``
        ``Binding``)."""

    def written(self, session_id: str, index: int) -> None:
        """The answer to ``index`` was written to the client (its outbox entry goes)."""


class UtteranceFail(Protocol):
    """Puts an answer made without a job into the session's delivery (``utterance_fail.lua``,
    through the scripts facade); returns the delivery (``code``, ``items``)."""

    async def utterance_fail(
        self,
        *,
        session_id: str,
        utterance_index: int,
        now_ms: int,
        payload: dict[str, Any],
        gap_ms: int,
        session_ttl_ms: int,
    ) -> Any: ...


class HeldNode(Protocol):
    """A node connection, as the registry and the delivery router see it."""

    conn_id: str
    ws: ServerConnection

    def send_to_node(self, payload: dict[str, Any]) -> None: ...

    def reregister(self) -> bool: ...

    async def close(self, code: int, reason: str) -> None: ...


class CellPlacement(Protocol):
    """Chooses a new session's cell (``placement.Placement``)."""

    def home(self, region: str | None) -> str:
        """The cell of ``region`` (None: the gateway's own region)."""
        ...

    async def place(self, region: str | None, pair: tuple[str, str]) -> tuple[str, str]:
        """``(home cell, cell placed in)``."""
        ...


class HeldSession(Protocol):
    """A session connection, as the registry and the delivery router see it."""

    conn_id: str

    def deliver(self, msg: ToSession) -> bool: ...


class Connections:
    """The connections this replica holds, by node id and by session id, and the background
    tasks they start (the close of a connection replaced by a newer one), referenced until
    they end."""

    def __init__(self) -> None:
        self.nodes: dict[str, HeldNode] = {}
        self.sessions: dict[str, HeldSession] = {}
        self._background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, holding a reference until it ends."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


@dataclass(frozen=True)
class NodeDeps:
    """What a node connection uses."""

    settings: Settings
    metrics: Metrics
    publisher: EventPublisher  # job.node_event, node.disconnected
    beats: BeatSink  # heartbeats, coalesced into node.heartbeat.batch
    register: RegisterCall  # node.register, answered by node-manager
    connections: Connections  # binds the node id; a newer connection replaces an older one
    cells: CellMap = field(default_factory=CellMap.single)  # the node's cell is its region's


@dataclass(frozen=True)
class SessionDeps:
    """What a session connection (and its audio) uses."""

    settings: Settings
    metrics: Metrics
    publisher: EventPublisher  # job.request
    store: SessionRecords  # the session record
    scripts: UtteranceFail  # answers without a job (silence, a failed publish)
    connections: Connections  # binds the session id, for the dispatcher's answers
    cells: CellMap = field(default_factory=CellMap.single)
    # the cell a new session lives in (its region's, or a fallback's); None: the default
    placement: CellPlacement | None = None
    scripts_in: Callable[[str], UtteranceFail] | None = None  # the scripts of another cell
