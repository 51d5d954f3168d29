"""Every key each script really touches is one its header declares (item 2 of the contract).

The scripts run on the test Redis through the one call path, in scenarios that take every
branch that reaches a key (register, re-register, re-pool, drop, leave, expire; create,
select with a session's node, a spill, a wait, an expired member and no pool; ack, finish
with earlier jobs, ordered and first-come delivery, gaps, release, cool-downs, summaries),
while a MONITOR connection records the commands Redis runs inside each script (client
``lua``). ``COMMAND GETKEYS`` names the keys of each command. Then, per script:

- every touched key is one of the KEYS it was given, or matches a template its header lists
  under ``built from KEYS[i]`` (a same-cell key built from the declared prefix);
- every touched key carries the cell's hash tag (one Redis Cluster slot);
- every declared key and every template is touched in some scenario: the header lists
  nothing the script does not do.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import MODULES, ScriptCode, Scripts, find_lua_dir, heartbeat_batch
from lingua_shared.scripts.header import parse_header, template_regex
from lingua_shared.testing import TEST_DB, needs_single_server, node_beat, node_registration

LUA_DIR = find_lua_dir()
NOW = 1_700_000_000_000
TTL = 600_000
GAP = 5_000
SESSION_TTL = 900_000
MARK = "lingua-script-keys"
LINE_RE = re.compile(rb"^\S+ \[(\d+) ([^\]]+)\] (.*)$")
ARG_RE = re.compile(rb'"((?:[^"\\]|\\.)*)"')
ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def unescape(arg: bytes) -> bytes:
    """An argument as MONITOR quotes it (``sdscatrepr``), back to its bytes."""
    out, i = bytearray(), 0
    while i < len(arg):
        c = arg[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = arg[i + 1 : i + 2]
        if nxt == b"x":
            out.append(int(arg[i + 2 : i + 4], 16))
            i += 4
        else:
            out += ESCAPES.get(nxt, nxt)
            i += 2
    return bytes(out)


class KeyRecorder:
    """Runs each call between two ECHO marks while MONITOR records; then the keys of the
    commands each script ran (``lua`` lines of the test database between its marks)."""

    def __init__(self, redis_url: str, client: Redis) -> None:
        self.monitor_client = Redis.from_url(redis_url)
        self.client = client
        self.calls: list[tuple[str, list[str]]] = []  # (script, the KEYS it was given)
        self.lines: list[bytes] = []

    async def __aenter__(self) -> KeyRecorder:
        self.monitor = self.monitor_client.monitor()
        await self.monitor.__aenter__()
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.monitor.__aexit__(*exc)
        await self.monitor_client.aclose()

    async def _read(self) -> None:
        assert self.monitor.connection is not None
        while True:
            line = await self.monitor.connection.read_response()
            self.lines.append(line)
            if f'"{MARK}:done"'.encode() in line:
                return

    async def mark(self, what: str) -> None:
        await self.client.echo(f"{MARK}:{what}")

    async def finish(self) -> dict[int, set[str]]:
        """Keys touched by each call, by call number."""
        await self.mark("done")
        await asyncio.wait_for(self.reader, 10)
        commands: dict[int, list[list[bytes]]] = defaultdict(list)
        current: int | None = None
        for line in self.lines:
            m = LINE_RE.match(line)
            if not m or int(m.group(1)) != TEST_DB:
                continue
            args = [unescape(a) for a in ARG_RE.findall(m.group(3))]
            if m.group(2) != b"lua":
                if args[:1] == [b"ECHO"] and args[1].startswith(MARK.encode()):
                    tag = args[1].decode().rsplit(":", 1)[1]
                    current = int(tag) if tag.isdigit() else None
                continue
            assert current is not None, f"a script command outside a marked call: {line!r}"
            commands[current].append(args)
        touched: dict[int, set[str]] = {}
        for n, cmds in commands.items():
            async with self.client.pipeline(transaction=False) as pipe:
                for args in cmds:
                    pipe.command_getkeys(*(a.decode() for a in args))
                replies = await pipe.execute()
            touched[n] = {k.decode() if isinstance(k, bytes) else k for r in replies for k in r}
        return touched


Call = Callable[..., Awaitable[Any]]


def reg(node_id: str, **over: Any) -> dict[str, Any]:
    return node_registration(node_id, **{"now_ms": NOW, "ttl_ms": TTL, **over})


def beat(node_id: str, **over: Any) -> dict[str, Any]:
    return node_beat(node_id, **{"now_ms": NOW, **over})


def create(job_id: str, session_id: str, index: int) -> dict[str, Any]:
    return {
        "request_key": f"{session_id}:{index}",
        "job_id": job_id,
        "now_ms": NOW,
        "ttl_ms": TTL,
        "fields": {"session_id": session_id, "utterance_index": index},
        "audio": "QUJD",
    }


def select(job_id: str, pair: tuple[str, str] = ("zh", "en"), **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "now_ms": NOW,
        "lease_ms": 3_000,
        "pair_src": pair[0],
        "pair_tgt": pair[1],
        "services": ["asr", "semantic"],
        "policy": "pack",
        "candidates": 8,
        "wait_until_ms": 0,
        "retry_ms": 100,
    }
    kw.update(over)
    return kw


def finish(job_id: str, node_id: str, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "node_id": node_id,
        "now_ms": NOW + 1_000,
        "outcome": "done",
        "payload": {"type": "translation_result", "job_id": job_id},
        "gap_ms": GAP,
        "session_ttl_ms": SESSION_TTL,
    }
    kw.update(over)
    return kw


def release(job_id: str, **over: Any) -> dict[str, Any]:
    kw = {"job_id": job_id, "attempt": 1, "reason": "deadline", "now_ms": NOW + 500}
    return {"max_attempts": 3, **kw, **over}


def fail(session_id: str, index: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "utterance_index": index,
        "now_ms": NOW + 2_000,
        "payload": {"type": "missing_result", "utterance_index": index},
        "gap_ms": GAP,
        "session_ttl_ms": SESSION_TTL,
    }


async def node_scenarios(call: Call) -> None:
    assert (await call("register_node_v2", **reg("n1"))).code == ScriptCode.CREATED
    assert (await call("heartbeat_with_pool_assign", **beat("n1"))).pools_changed
    r = await call("register_node_v2", **reg("n1", conn_id="c2"))
    assert (r.code, r.replaced_conn_id) == (ScriptCode.REFRESHED, "c-n1")
    # the replaced connection's late registration and beat are fenced off
    assert (await call("register_node_v2", **reg("n1"))).code == ScriptCode.CONN_REPLACED
    assert (await call("heartbeat_with_pool_assign", **beat("n1"))).code == ScriptCode.STALE
    # new language sets: leaves (and empties) its shard, joins another
    r = await call(
        "heartbeat_with_pool_assign", **beat("n1", conn_id="c2", lang_sets=[["en", "ja"]])
    )
    assert r.pools_changed
    ghost = await call("heartbeat_with_pool_assign", **beat("ghost"))
    assert ghost.code == ScriptCode.NOT_REGISTERED
    off = {"node_id": "n1", "now_ms": NOW}
    assert (await call("node_offline", mode="dropped", conn_id="c2", **off)).code == 1
    assert (await call("heartbeat_with_pool_assign", **beat("n1", conn_id="c2"))).code == -3
    assert (await call("node_offline", mode="dropped", conn_id="c-x", **off)).code == -2
    assert (await call("node_offline", mode="graceful", **off)).pools_removed == 1
    assert (await call("node_offline", mode="graceful", **off)).code == ScriptCode.ALREADY_GONE
    await call("register_node_v2", **reg("n2"))
    await call("heartbeat_with_pool_assign", **beat("n2"))
    # a batch: each beat as heartbeat_with_pool_assign applies it, results in order
    await call("register_node_v2", **reg("n3"))
    batch = await call(
        "heartbeat_batch",
        gateway_id="gw-1",
        now_ms=NOW,
        max_shard_size=64,
        beats=[
            heartbeat_batch.beat_args(node_id="n3", conn_id="c-n3", running_jobs=1),
            heartbeat_batch.beat_args(node_id="ghost", conn_id="c-g"),
            heartbeat_batch.beat_args(node_id="n2", conn_id="c-n2", lang_sets=[["en", "ja"]]),
        ],
    )
    assert [r.code for r in batch] == [1, ScriptCode.NOT_REGISTERED, 1]
    assert batch[0].pools_changed and batch[2].pools_changed
    await call("node_offline", mode="graceful", node_id="n3", now_ms=NOW)
    expired = {"node_id": "n2", "mode": "expired"}
    assert (await call("node_offline", now_ms=NOW, **expired)).code == ScriptCode.NOT_EXPIRED
    assert (await call("node_offline", now_ms=NOW + TTL + 1, **expired)).code == 1


async def job_scenarios(call: Call, redis: Redis, keys: Keys) -> None:
    # "a" acks its jobs and has one slot (zh-en); "b" never acks (de-fr)
    await call("register_node_v2", **reg("a", capacity=1))
    await call("heartbeat_with_pool_assign", **beat("a"))
    await call("register_node_v2", **reg("b", lang_sets=[["de", "fr"]], acks=False))
    await call("heartbeat_with_pool_assign", **beat("b"))
    for sid, delivery in (("s-ord", "ordered"), ("s-arr", "arrival"), ("s-b", "ordered")):
        await redis.hset(
            keys.session(sid), mapping={"gateway_id": "gw-s", "conn_id": "cs", "delivery": delivery}
        )

    # create, select (and its replay), ack, finish in order
    assert (await call("job_create", **create("j1", "s-ord", 0))).code == ScriptCode.JOB_CREATED
    dup = await call("job_create", **{**create("j1", "s-ord", 0), "job_id": "j1x"})
    assert (dup.code, dup.job_id) == (ScriptCode.DUPLICATE, "j1")
    assert (await call("select_node", **select("j1"))).state == "assigned"
    assert (await call("select_node", **select("j1"))).code == ScriptCode.RESERVED  # replay
    ack = {"job_id": "j1", "attempt": 1, "now_ms": NOW + 100, "deadline_ms": 30_000}
    assert (await call("job_ack", node_id="a", **ack)).code == ScriptCode.COMMITTED
    assert (await call("job_ack", node_id="a", **ack)).code == ScriptCode.ALREADY_ACKED
    assert (await call("job_ack", node_id="b", **ack)).code == ScriptCode.STALE_JOB
    assert (await call("job_ack", node_id="a", **{**ack, "job_id": "no"})).code == -6
    assert (await call("select_node", **select("j1"))).code == ScriptCode.NOT_WAITING
    assert (await call("select_node", **select("no"))).code == ScriptCode.NO_SUCH_JOB
    assert (await call("job_finish", **finish("j1", "b"))).code == ScriptCode.STALE_JOB
    assert [i for i, _ in (await call("job_finish", **finish("j1", "a"))).items] == [0]
    assert (await call("job_finish", **finish("j1", "a"))).code == ScriptCode.ALREADY_FINISHED
    assert (await call("job_finish", **finish("no", "a"))).code == ScriptCode.NO_SUCH_JOB

    # a hole in the order (index 1 never comes): held, then answered by gap_expire
    await call("job_create", **create("j3", "s-ord", 2))
    await call("select_node", **select("j3"))
    assert (await call("job_finish", **finish("j3", "a"))).items == []
    gap = {"session_id": "s-ord", "gap_ms": GAP, "session_ttl_ms": SESSION_TTL}
    due = await call("gap_expire", now_ms=NOW + 2 * GAP, **gap)
    assert [i for i, _ in due.items] == [1, 2]
    assert (await call("gap_expire", now_ms=NOW + 2 * GAP, **gap)).code == ScriptCode.NO_GAP
    await redis.zadd(keys.gaps, {"s-ord": NOW})  # a deadline left over with nothing held
    assert (await call("gap_expire", now_ms=NOW + 2 * GAP, **gap)).code == ScriptCode.NO_GAP
    # a hole in a first-come session (its delivery changed with an outcome held)
    await redis.hset(keys.session_results("s-arr"), "3", '{"type": "x"}')
    await redis.zadd(keys.gaps, {"s-arr": NOW})
    arr_gap = {**gap, "session_id": "s-arr", "now_ms": NOW + 2 * GAP}
    assert (await call("gap_expire", **arr_gap)).code == ScriptCode.GAP_ANSWERED
    await redis.delete(keys.session_results("s-arr"))

    # first come, first served: index 2 before 0
    await call("job_create", **create("j4", "s-arr", 2))
    await call("select_node", **select("j4"))
    assert [i for i, _ in (await call("job_finish", **finish("j4", "a"))).items] == [2]

    # an answer ends the earlier jobs its node left unanswered; the session stays on b
    await call("job_create", **create("j5", "s-b", 0))
    await call("job_create", **create("j6", "s-b", 1))
    assert (await call("select_node", **select("j5", ("de", "fr")))).node_id == "b"
    assert (await call("select_node", **select("j6", ("de", "fr")))).node_id == "b"
    d = await call("job_finish", **finish("j6", "b", earlier=[("j5", 1)]))
    assert [i for i, _ in d.items] == [0, 1]

    # take-backs: released, replayed, no attempt left, gone
    await call("job_create", **create("j7", "s-b", 2))
    await call("select_node", **select("j7", ("de", "fr")))
    assert (await call("job_release", **release("j7"))).code == ScriptCode.RELEASED
    assert (await call("job_release", **release("j7"))).code == ScriptCode.NOT_CURRENT
    # its only node was tried: no node, then a wait for a slot
    again = select("j7", ("de", "fr"), attempt=2)
    assert (await call("select_node", **again)).reason == "no_free_slot"
    assert (await call("select_node", **{**again, "wait_until_ms": NOW + 2_000})).waiting
    await call("job_create", **create("j8", "s-b", 3))
    await call("select_node", **select("j8", ("de", "fr")))
    assert (await call("job_release", **release("j8", max_attempts=1))).code == 2
    assert (await call("job_release", **release("no"))).code == ScriptCode.NO_SUCH_JOB
    assert (await call("job_release", **release("j8", max_attempts=1))).code == 2  # a replay

    # a node's connection ends: its jobs are taken back in one call, fenced by connection
    await call("job_create", **create("j10", "s-b", 6))
    assert (await call("select_node", **select("j10", ("de", "fr")))).node_id == "b"
    lost = {"node_id": "b", "now_ms": NOW + 600, "max_attempts": 3}
    assert (await call("node_lost", conn_id="c-x", **lost)).code == ScriptCode.NEWER_CONNECTION
    assert [t.job_id for t in (await call("node_lost", conn_id="c-b", **lost)).jobs] == ["j10"]
    # counts that drifted from the node's live jobs are recounted
    await call("job_create", **create("j11", "s-b", 7))
    await call("select_node", **select("j11", ("de", "fr")))
    await redis.hset(keys.node("b"), "running", 3)
    assert (await call("slots_reconcile", node_ids=["b", "a"])).fixed == 1

    # no pool covers the pair; a member whose record expired is taken out of its shard
    await call("job_create", **create("j9", "s-b", 4))
    assert (await call("select_node", **select("j9", ("ja", "ko")))).reason == "no_covering_pool"
    await call("register_node_v2", **reg("e", lang_sets=[["it", "pt"]]))
    await call("heartbeat_with_pool_assign", **beat("e"))
    await redis.delete(keys.node("e"))
    assert (await call("select_node", **select("j9", ("it", "pt")))).code == ScriptCode.NO_NODE
    assert not await redis.exists(keys.pool("it_pt:eu:a100:0"))
    # a private node is scored in the band of its tenant (the registry of bands)
    await call("register_node_v2", **reg("p", public=False, tenant="t1", lang_sets=[["it", "pt"]]))
    await call("heartbeat_with_pool_assign", **beat("p"))
    # ...in a batch too
    p_beat = heartbeat_batch.beat_args(node_id="p", conn_id="c-p")
    batch = await call("heartbeat_batch", gateway_id="gw-1", now_ms=NOW, max_shard_size=64,
                       beats=[p_beat])  # fmt: skip
    assert batch[0].code == ScriptCode.ALIVE

    # utterances that never became jobs
    assert (await call("utterance_fail", **fail("s-ord", 9))).code == ScriptCode.ANSWERED
    assert (await call("utterance_fail", **fail("s-arr", 5))).code == ScriptCode.ANSWERED
    assert (await call("utterance_fail", **fail("s-ord", 0))).code == 0
    assert (await call("utterance_fail", **fail("gone", 0))).code == ScriptCode.NO_SUCH_SESSION

    # the outbox: claimed while a live gateway holds the session, parked when none does,
    # acknowledged by the gateway once written to the client
    await redis.set(keys.gateway("gw-s"), "1")
    await redis.hdel(keys.session("s-b"), "gateway_id")
    claim = {"retry_ms": 1_000, "limit": 10}
    claimed = await call("outbox_claim", now_ms=NOW + 10 * GAP, **claim)
    assert {p.session_id for p in claimed} == {"s-ord", "s-arr"}
    assert not await redis.zscore(keys.outbox, "s-b")  # parked: waits for a resume
    arr = next(p for p in claimed if p.session_id == "s-arr")
    indices = [i for i, _ in arr.items]
    assert (await call("outbox_ack", session_id="s-arr", indices=indices)).value == "0"
    assert (await call("outbox_ack", session_id="s-ord", indices=[0])).code == ScriptCode.ACKED

    # a gateway's heartbeat batches applied: the mark keeps the largest sequence number, the
    # watermark moves with it
    mark = {"gateway_id": "gw-s", "ttl_ms": 60_000}
    assert (await call("heartbeats_applied", seq=7, covers_ms=NOW, **mark)).value == "7"
    assert (await call("heartbeats_applied", seq=5, covers_ms=NOW + 1, **mark)).value == "7"
    assert await redis.hget(keys.heartbeats_covered, "gw-s") == str(NOW).encode()

    # a session resumed on another connection; the old connection's unbind changes nothing
    await redis.hset(keys.session("s-arr"), mapping={"mode": "one_way", "client": "alice"})
    await redis.hset(keys.session_outbox("s-arr"), "9", "{}")  # owed: the resume replays it
    bind = {"now_ms": NOW, "session_ttl_ms": SESSION_TTL, "client": "alice"}
    r = await call("session_bind", session_id="s-arr", mode="resume", gateway_id="gw-2",
                   conn_id="c2", **bind)  # fmt: skip
    assert (r.code, r.old_gateway_id, r.record["mode"]) == (ScriptCode.RESUMED, "gw-s", "one_way")
    foreign = {**bind, "client": "mallory"}
    r = await call("session_bind", session_id="s-arr", mode="resume", gateway_id="gw-3",
                   conn_id="c3", **foreign)  # fmt: skip
    assert r.code == ScriptCode.FOREIGN_SESSION
    r = await call("session_bind", session_id="s-arr", mode="unbind", gateway_id="gw-s",
                   conn_id="cs", **bind)  # fmt: skip
    assert r.code == ScriptCode.NOT_BOUND
    r = await call("session_bind", session_id="s-arr", mode="unbind", gateway_id="gw-2",
                   conn_id="c2", **bind)  # fmt: skip
    assert r.code == ScriptCode.UNBOUND
    r = await call("session_bind", session_id="gone", mode="resume", gateway_id="gw-2",
                   conn_id="c2", **bind)  # fmt: skip
    assert r.code == ScriptCode.NO_SUCH_SESSION

    # timers, cool-downs, display reads
    assert await call("timers_claim", now_ms=NOW + TTL, claim_ms=5_000, limit=100)
    cool = {"service": "asr", "until_ms": NOW + 60_000}
    assert (await call("service_cooldown", node_id="a", **cool)).code == ScriptCode.COOLING
    assert (await call("service_cooldown", node_id="no", **cool)).code == ScriptCode.NO_SUCH_NODE
    ids = ["a", "b", "no"]
    assert len(await call("nodes_read", field_names=["region", "running"], node_ids=ids)) == 3
    assert (await call("nodes_summary", node_ids=ids)).alive == 2
    shards = ["en_zh:eu:a100:0", "de_fr:eu:a100:0", "en_zh:eu:a100:9"]
    assert [s.members for s in await call("pools_summary", shard_ids=shards)] == [1, 1, 0]


@needs_single_server
async def test_every_key_a_script_touches_is_declared_in_its_header(
    redis_url: str, redis: Redis, keys: Keys, scripts: Scripts
):
    recorder = KeyRecorder(redis_url, redis)

    async def call(name: str, **kw: Any) -> Any:
        n = len(recorder.calls)
        recorder.calls.append((name, MODULES[name].args(keys, **kw)[0]))
        await recorder.mark(str(n))
        return await getattr(scripts, name)(**kw)

    async with recorder:
        await node_scenarios(call)
        await job_scenarios(call, redis, keys)
        touched = await recorder.finish()

    by_script: dict[str, set[str]] = defaultdict(set)  # what each template / key matched
    problems = []
    for n, (name, declared) in enumerate(recorder.calls):
        header = parse_header(LUA_DIR, name)
        prefix_of = {i: declared[i - 1] for i in header.built}
        patterns = {
            t: template_regex(prefix_of[i], t) for i, ts in header.built.items() for t in ts
        }
        full = {k for k in declared if k not in prefix_of.values()}
        for key in sorted(touched.get(n, set())):
            if re.search(r"\{([^}]*)\}", key).group(1) != keys.cell:  # type: ignore[union-attr]
                problems.append(f"{name}: {key} is outside the cell")
            hits = [t for t, p in patterns.items() if p.match(key)]
            if key in full:
                by_script[name].add(f"KEYS[{declared.index(key) + 1}]")
            elif hits:
                by_script[name].update(hits)
            else:
                problems.append(f"{name}: touched {key}, which its header does not declare")
    assert problems == []

    for name in MODULES:
        header = parse_header(LUA_DIR, name)
        documented = {f"KEYS[{i}]" for i, key_name, _ in header.keys if key_name != "prefix"}
        documented |= set(header.templates)
        assert documented, name
        assert documented == by_script[name], f"{name}: documented but never touched"
