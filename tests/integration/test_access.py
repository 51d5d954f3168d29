"""Who gets in, from where, how often and how fast: a real gateway with authentication on
(RELIABILITY W2, W3, W5 and the identity rules of the security checklist)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from lingua_shared.auth import mint
from tests.support.helpers import eventually, metric, register_frame

pytestmark = pytest.mark.integration

SECRET = "integration-secret-" + "x" * 45
ORIGIN = "https://app.example"
AUTH_ENV = {
    "LINGUA_AUTH": "on",
    "LINGUA_AUTH_SECRET": SECRET,
    "LINGUA_WS_ALLOWED_ORIGINS": ORIGIN,
    "LINGUA_WS_MAX_CONNECTIONS_PER_IDENTITY": "2",
    "LINGUA_WS_SESSION_BYTES_PER_S": "20000",
    "LINGUA_WS_RATE_BURST_S": "0.5",
}


@pytest.fixture
def gw(stack):
    """A second gateway replica, with authentication, an Origin allowlist and low limits."""
    p = stack.start("gw-auth", "gateway", **AUTH_ENV)
    p.wait_ready()
    return stack


def url(stack, endpoint: str, token: str | None = None) -> str:
    base = stack.gateway_url("gw-auth").replace("/ws/node", f"/ws/{endpoint}")
    return f"{base}?token={token}" if token else base


def node_token(node_id: str, ttl: int = 600, now: int = 0) -> str:
    return mint("node", node_id, ttl, "HS256", SECRET, now=now)


def client_token(client_id: str) -> str:
    return mint("client", client_id, 600, "HS256", SECRET)


async def closed_with(ws: ClientConnection, within: float = 5.0) -> tuple[int | None, str]:
    """The close code and reason, reading (and returning) nothing else first."""
    try:
        frame = await asyncio.wait_for(ws.recv(), within)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
    raise AssertionError(f"expected a close, got a message: {frame!r}")


def unsigned(claims: dict[str, object]) -> str:
    def enc(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."


async def test_w3_unauthenticated_sockets_are_closed_before_anything_is_processed(gw, redis):
    now = int(time.time())
    bad = {
        "no token": None,
        "bad signature": mint("node", "n-w3", 600, "HS256", "y" * 64),
        "alg none": unsigned(
            {
                "sub": "n-w3",
                "aud": "lingua-node",
                "iss": "lingua-scheduler",
                "iat": now,
                "exp": now + 60,
            }
        ),
        "expired": node_token("n-w3", ttl=60, now=now - 3_600),
        "client token on the node endpoint": client_token("n-w3"),
    }
    for case, token in bad.items():
        async with connect(url(gw, "node", token)) as ws:
            started = time.monotonic()
            # a registration sent at once must not be processed (the close may come first)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(register_frame("n-w3"))
            code, reason = await closed_with(ws)
            assert code == 1008, (case, code, reason)
            assert time.monotonic() - started < 5, case
            assert token is None or token not in reason
    assert not await redis.exists(gw.keys.node("n-w3"))
    assert metric(
        gw, "gw-auth", "lingua_gateway_access_refused_total", endpoint="node", reason="unauthorized"
    ) == len(bad)


async def test_a_node_token_speaks_for_its_own_node_only(gw, redis):
    token = node_token("n-own")
    async with connect(
        url(gw, "node"), additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(register_frame("n-own"))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "node_register_ack" and ack["node_id"] == "n-own"
    await eventually(lambda: _absent(redis, gw, "n-own"), what="graceful removal")

    async with connect(url(gw, "node", token)) as ws:
        await ws.send(register_frame("n-someone-else"))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["type"] == "error" and err["code"] == "UNAUTHORIZED"
        assert "n-own" in err["message"]
        code, _ = await closed_with(ws)
        assert code == 1008
    async with connect(url(gw, "node", token)) as ws:  # resuming as another node: same answer
        await ws.send(json.dumps({"type": "node_heartbeat", "node_id": "n-other", "timestamp": 1}))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["code"] == "UNAUTHORIZED"
        assert (await closed_with(ws))[0] == 1008
    assert not await redis.exists(gw.keys.node("n-someone-else"))
    assert not await redis.exists(gw.keys.node("n-other"))


async def _absent(redis, stack, node_id: str) -> bool:
    return not await redis.exists(stack.keys.node(node_id))


async def test_w2_foreign_origins_are_refused_with_403(gw):
    with pytest.raises(InvalidStatus) as exc:
        async with connect(url(gw, "session", client_token("c1")), origin="https://evil.example"):
            pass
    assert exc.value.response.status_code == 403
    async with connect(url(gw, "session", client_token("c1")), origin=ORIGIN) as ws:
        await ws.send(json.dumps({"type": "session_init", "src_lang": "zh", "tgt_lang": "en"}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "session_init_ack"
    assert (
        metric(
            gw,
            "gw-auth",
            "lingua_gateway_access_refused_total",
            endpoint="session",
            reason="origin",
        )
        == 1
    )


async def test_connections_per_identity_are_bounded(gw):
    token = client_token("c-many")
    async with connect(url(gw, "session", token)) as a, connect(url(gw, "session", token)) as b:
        async with connect(url(gw, "session", token)) as third:
            code, reason = await closed_with(third)
            assert code == 1008 and "too many connections" in reason
        for ws in (a, b):  # the first two are unaffected
            await ws.send(
                json.dumps({"type": "client_heartbeat", "session_id": "", "timestamp": 1})
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "server_heartbeat"

    async def served_again() -> bool:  # the slots are released once the server side closes
        async with connect(url(gw, "session", token)) as again:
            await again.send(
                json.dumps({"type": "client_heartbeat", "session_id": "", "timestamp": 1})
            )
            try:
                reply = json.loads(await asyncio.wait_for(again.recv(), 10))
            except ConnectionClosed:
                return False
            return reply["type"] == "server_heartbeat"

    await eventually(served_again, timeout=10, interval=0.2, what="a connection after release")


async def test_w5_a_flooding_client_is_throttled_and_others_are_unaffected(gw):
    """20 kB/s with a 0.5 s burst: 160 kB takes the flooder several seconds to get through,
    while another client's heartbeats are answered promptly all along."""
    async with (
        connect(url(gw, "session", client_token("flood"))) as flood,
        connect(url(gw, "session", client_token("calm"))) as calm,
    ):
        await flood.send(json.dumps({"type": "session_init", "src_lang": "zh", "tgt_lang": "en"}))
        sid = json.loads(await asyncio.wait_for(flood.recv(), 10))["session_id"]
        audio = base64.b64encode(b"\x01\x00" * 4_000).decode()  # ~10.7 kB per frame as JSON

        async def spam() -> None:
            for seq in range(15):
                await flood.send(
                    json.dumps(
                        {
                            "type": "audio_chunk",
                            "session_id": sid,
                            "seq": seq,
                            "is_final": False,
                            "payload": audio,
                        }
                    )
                )

        await spam()  # returns at once: the socket buffers take it all; the gateway reads slowly
        for _ in range(10):  # meanwhile another client is served as usual
            await calm.send(
                json.dumps({"type": "client_heartbeat", "session_id": "", "timestamp": 1})
            )
            reply = json.loads(await asyncio.wait_for(calm.recv(), 5))
            assert reply["type"] == "server_heartbeat"
        await eventually(
            lambda: _throttled(gw),
            timeout=15,
            what="the flooder's reads paused (throttled seconds counted)",
        )
        # nothing the flooder sent is lost: its heartbeat is answered after the whole backlog
        await flood.send(
            json.dumps({"type": "client_heartbeat", "session_id": sid, "timestamp": 2})
        )
        reply = json.loads(await asyncio.wait_for(flood.recv(), 30))
        assert reply["type"] == "server_heartbeat", reply


async def _throttled(stack) -> bool:
    return (
        metric(stack, "gw-auth", "lingua_gateway_throttled_seconds_total", endpoint="session") > 1.0
    )


async def test_a_gateway_with_auth_on_and_no_key_refuses_to_start(stack):
    p = stack.start("gw-nokey", "gateway", LINGUA_AUTH="on")
    assert p.proc is not None
    assert p.proc.wait(30) == 2
    assert "LINGUA_AUTH_SECRET is required" in p.log_path.read_text()
    del stack.procs["gw-nokey"]
