"""A small fault-injecting TCP proxy of our own (no netem, no Toxiproxy on this machine).

It runs an asyncio loop in a thread and forwards ``127.0.0.1:<port>`` to a target. The mode
can be changed at any time from the test's thread:

- ``pass``: forward both ways;
- ``latency``: hold every chunk ``ms`` milliseconds before forwarding it (order kept);
- ``blackhole``: accept, never forward; bytes of existing and new connections are swallowed.
  Connections that saw the blackhole stay dead afterwards (a half-open link: the peers only
  find out through their own timeouts or heartbeats); connections made later pass again;
- ``reset``: abort every connection with a TCP RST, and every new one at once;
- ``drop_replies``: forward, but drop whole server->client replies. For Redis (RESP) the
  commands are parsed as well, so only replies to the commands named in ``commands`` (e.g.
  ``EVALSHA``) are dropped, with probability ``fraction`` (seeded) or every ``every``-th one;
  with ``match``, only replies to requests holding those bytes (a script's SHA, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, field


class RespError(ValueError):
    pass


def resp_frame_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """End offset of the one RESP value that starts at ``pos``, or None if incomplete."""
    if pos >= len(buf):
        return None
    kind = buf[pos : pos + 1]
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    line = bytes(buf[pos + 1 : eol])
    nxt = eol + 2
    if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return nxt
    if kind in (b"$", b"!", b"="):
        n = int(line)
        if n < 0:
            return nxt
        end = nxt + n + 2
        return end if end <= len(buf) else None
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(line)
        if kind in (b"%", b"|"):
            n *= 2
        for _ in range(max(n, 0)):
            end = resp_frame_end(buf, nxt)
            if end is None:
                return None
            nxt = end
        return nxt
    raise RespError(f"not RESP: {bytes(buf[pos : pos + 16])!r}")


def resp_command_name(frame: bytes) -> str:
    """The command of a client request (an array of bulk strings), upper-cased."""
    if not frame.startswith(b"*"):
        return frame.split(b" ", 1)[0].strip().decode(errors="replace").upper()  # inline
    first = frame.index(b"\r\n") + 2  # past *N
    eol = frame.index(b"\r\n", first)
    n = int(frame[first + 1 : eol])
    return frame[eol + 2 : eol + 2 + n].decode(errors="replace").upper()


@dataclass
class Mode:
    name: str = "pass"
    ms: float = 0.0
    fraction: float = 0.0
    every: int = 0
    commands: frozenset[str] = frozenset()
    match: bytes = b""


@dataclass
class Counters:
    connections: int = 0
    replies: int = 0
    dropped: int = 0
    dropped_by_command: dict[str, int] = field(default_factory=dict)


class _Link:
    """One proxied connection: client <-> target."""

    def __init__(self, proxy: FaultProxy, cr, cw, sr, sw) -> None:  # type: ignore[no-untyped-def]
        self.proxy = proxy
        self.cr, self.cw, self.sr, self.sw = cr, cw, sr, sw
        self.dead = False  # saw a blackhole: swallow everything from now on
        # RESP: commands awaiting replies, in order, and whether the request held mode.match
        self.pending: list[tuple[str, bool]] = []
        self.cbuf = bytearray()
        self.sbuf = bytearray()

    def abort(self) -> None:
        for w in (self.cw, self.sw):
            if w is None:
                continue
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()

    async def pump(self, reader, writer, upstream: bool) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                mode = self.proxy.mode
                if mode.name == "blackhole" or self.dead:
                    self.dead = True
                    continue
                if mode.name == "latency" and mode.ms > 0:
                    await asyncio.sleep(mode.ms / 1000)
                if self.proxy.resp:
                    data = self._resp(data, upstream, mode)
                    if not data:
                        continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, RespError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if not self.dead:
                    writer.close()

    def _resp(self, data: bytes, upstream: bool, mode: Mode) -> bytes:
        """Track commands (client->server) and filter whole replies (server->client)."""
        buf = self.cbuf if upstream else self.sbuf
        buf += data
        out = bytearray()
        while True:
            end = resp_frame_end(buf)
            if end is None:
                break
            frame = bytes(buf[:end])
            del buf[:end]
            if upstream:
                self.pending.append((resp_command_name(frame), mode.match in frame))
                out += frame
                continue
            if frame.startswith(b">"):  # RESP3 push: not a reply
                out += frame
                continue
            command, matched = self.pending.pop(0) if self.pending else ("?", False)
            if matched and self._drop(command, mode):
                continue
            out += frame
        return bytes(out)

    def _drop(self, command: str, mode: Mode) -> bool:
        c = self.proxy.counters
        if mode.name != "drop_replies" or (mode.commands and command not in mode.commands):
            return False
        c.replies += 1
        drop = (
            c.replies % mode.every == 0 if mode.every else self.proxy.rng.random() < mode.fraction
        )
        if drop:
            c.dropped += 1
            c.dropped_by_command[command] = c.dropped_by_command.get(command, 0) + 1
        return drop


class FaultProxy:
    """``with FaultProxy(port) as p: ... p.set("latency", ms=50) ...``"""

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, resp: bool = False, seed: int = 7
    ) -> None:
        self.target = (target_host, target_port)
        self.resp = resp
        self.rng = random.Random(seed)
        self.mode = Mode()
        self.counters = Counters()
        self.port = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    # -- control (from the test's thread) ---------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def set(self, name: str, **kw: object) -> None:
        commands = frozenset(str(c).upper() for c in kw.pop("commands", ()) or ())  # type: ignore[attr-defined]
        mode = Mode(name, commands=commands, **kw)  # type: ignore[arg-type]
        if name == "reset":
            self._call(self._reset_all(mode))
        else:
            self.mode = mode

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- inside the loop --------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        # let the aborts' callbacks run and every connection handler end before the loop
        # stops: a transport left to the garbage collector warns (and fails the run)
        await asyncio.sleep(0.05)
        current = asyncio.current_task()
        handlers = [t for t in asyncio.all_tasks() if t is not current]
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _reset_all(self, mode: Mode) -> None:
        self.mode = mode
        for link in list(self._links):
            link.abort()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        if self.mode.name == "reset":
            _Link(self, cr, cw, None, None).abort()
            return
        link = _Link(self, cr, cw, None, None)
        if self.mode.name == "blackhole":
            link.dead = True
            self._links.add(link)
            try:
                while await cr.read(65536):
                    pass
            except (ConnectionError, OSError):
                pass
            finally:
                self._links.discard(link)
                cw.close()
            return
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            link.abort()
            return
        link.sr, link.sw = sr, sw
        self._links.add(link)
        try:
            await asyncio.gather(link.pump(cr, sw, True), link.pump(sr, cw, False))
        finally:
            self._links.discard(link)
            if link.dead:  # both directions ended: nothing is left to hold half-open
                link.abort()
