"""A stateful model of the whole scheduling state against the real Lua scripts (issue 6, item 5).

Nodes register (with one or two language sets, so pools and the pair index change), heartbeat,
drop, leave, crash silently; jobs are created and placed (``job_create`` + ``select_node``),
acknowledged, finished, taken back; time advances on a logical clock: a node record whose
logical expiry passed is deleted as its Redis TTL would, the sweeper (``node_offline
expired``) cleans what the TTL left behind, due timers (``timers_claim``) and result gaps
(``gap_expire``) fire as the dispatcher handles them. After every step:

- no node has more reserved + running slots than its capacity, no count is negative, and the
  counts equal the leases the model says the node's *current registration* holds;
- every lease (a member of ``node:<id>:jobs``) belongs to exactly one live attempt, and a job
  is in at most one node's lease set;
- pool memberships agree with node records (``node:<id>:pools``, shard zsets and their
  scores, shard counts, ``pools:index``, the pair index);
- each utterance index of a session is delivered at most once;

and at every selection, the node chosen is connected, not expired, covers the pair, was not
tried by the job and had a free slot (and "no node" only when the model knows none qualifies).

The Redis TTLs are long (10 minutes) so that real time never expires anything during a run;
only the logical clock does. ``LINGUA_MODEL_EXAMPLES`` (default 100, a few seconds) runs a
longer campaign; 50 was not enough to find the same-millisecond re-registration bug that
``reg_id`` fixes, 100 finds it.
"""

from __future__ import annotations

import os
from itertools import permutations
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts, find_lua_dir
from lingua_shared.testing import sync_redis_for_tests

NOW = 1_700_000_000_000
TTL = 600_000  # logical node TTL (and the real PEXPIRE, long enough never to fire)
LEASE = 3_000
DEADLINE = 30_000
GAP = 5_000
SESSION_TTL = 900_000
MAX_ATTEMPTS = 3
REGION, GPU = "eu", "a100"
CELL = "model"
MINE = Keys(CELL).prefix + "*"

NODES = {"a": 1, "b": 2, "c": 3}  # node id -> capacity (fixed per id)
NOT_ACKING = {"c"}  # never acks (lingua's agent): its jobs run from assignment
LANG_SETS = [
    [["en", "zh"]],
    [["en", "ja", "zh"]],
    [["ja", "zh"]],
    [["en", "zh"], ["en", "ja"]],
]
PAIRS = [("zh", "en"), ("en", "ja"), ("ja", "zh")]
SESSIONS = ["s1", "s2"]
pick = st.integers(0, 1_000)
node_st = st.sampled_from(sorted(NODES))


def shard_of(langs: list[str]) -> str:
    return f"{'_'.join(sorted(langs))}:{REGION}:{GPU}:0"


def load_score(running: int, reserved: int, capacity: int, connected: bool) -> float:
    return (running + reserved) / capacity + (0 if connected else 1000)


class SchedulingModel(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = sync_redis_for_tests(self.url, decode_responses=True)
        self.k = Keys(CELL)
        self._wipe()
        self.s = Scripts(self.r, self.k, find_lua_dir())  # type: ignore[arg-type]
        self.now = NOW
        self.serial = 0
        # node -> {"gen", "conn", "connected", "sets", "expiry", "record"}: "record" False once
        # the TTL deleted the hash (the sweeper has not cleaned up yet). Absent = gone.
        self.nodes: dict[str, dict[str, Any]] = {}
        self.gens = dict.fromkeys(NODES, 0)
        # job -> {"state", "attempt", "node", "gen", "tried", "pair", "session", "index", "seq"}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.seq: dict[tuple[str, int], int] = {}  # (node, gen) -> jobs assigned to it
        self.next_index = dict.fromkeys(SESSIONS, 0)
        self.delivered: dict[str, list[int]] = {s: [] for s in SESSIONS}

    def _wipe(self) -> None:
        mine = self.r.keys(MINE)
        if mine:
            self.r.delete(*mine)

    def teardown(self) -> None:
        self._wipe()
        self.r.close()

    def call(self, name: str, **kw: Any) -> list[Any]:
        k, a = getattr(self.s, f"{name}_args")(**kw)
        return list(self.s.script(name)(keys=k, args=a))

    # -- model helpers --------------------------------------------------------------------
    def live(self, states: tuple[str, ...] = ("assigned", "acked")) -> list[str]:
        return sorted(j for j, m in self.jobs.items() if m["state"] in states)

    def held(self, node: str, state: str | None = None) -> int:
        """Slots held in the node's current registration (assigned, acked, or both)."""
        m = self.nodes.get(node)
        if m is None or not m["record"]:
            return 0
        return sum(
            1
            for j in self.jobs.values()
            if j["state"] in ("assigned", "acked")
            and (state is None or j["state"] == state)
            and j["node"] == node
            and j["gen"] == m["gen"]
        )

    def covers(self, node: str, pair: tuple[str, str]) -> bool:
        return any(set(pair) <= set(langs) for langs in self.nodes[node]["sets"])

    def eligible(self, job: str) -> list[str]:
        m = self.jobs[job]
        return sorted(
            n
            for n, nm in self.nodes.items()
            if nm["record"]
            and nm["connected"]
            and nm["expiry"] > self.now
            and self.covers(n, m["pair"])
            and n not in m["tried"]
            and self.held(n) < NODES[n]
        )

    def deliver(self, session: str, reply: list[Any]) -> None:
        if reply[0] == 1:
            self.delivered[session].extend(int(x) for x in reply[3::2])

    # -- dispatcher-like steps ------------------------------------------------------------
    def place(self, job: str, attempt: int) -> None:
        m = self.jobs[job]
        free = self.eligible(job)
        src, tgt = m["pair"]
        reply = self.call(
            "select_node",
            job_id=job,
            attempt=attempt,
            now_ms=self.now,
            lease_ms=LEASE,
            pair_src=src,
            pair_tgt=tgt,
            services=["asr"],
            policy="pack",
            candidates=8,
            wait_until_ms=0,
            retry_ms=100,
        )
        if reply[0] != 1:
            assert reply[0] == -4 and not free, (job, reply, free)
            self.end(job, "failed")
            return
        node = reply[1]
        assert node in free, f"selected {node} for {job}; eligible: {free}"
        gen = self.nodes[node]["gen"]
        self.seq[(node, gen)] = self.seq.get((node, gen), 0) + 1
        state = "acked" if node in NOT_ACKING else "assigned"
        assert reply[5] == state, reply
        m.update(state=state, attempt=attempt, node=node, gen=gen, seq=self.seq[(node, gen)])
        m["tried"].add(node)

    def end(self, job: str, outcome: str) -> None:
        m = self.jobs[job]
        reply = self.call(
            "job_finish",
            job_id=job,
            attempt=0,
            node_id="",
            now_ms=self.now,
            outcome=outcome,
            payload={"type": "error", "code": "NO_AVAILABLE_NODE"},
            gap_ms=GAP,
            session_ttl_ms=SESSION_TTL,
        )
        assert reply[0] in (1, 3), reply
        self.deliver(m["session"], reply)
        m["state"] = outcome

    def take_back(self, job: str, reason: str) -> None:
        m = self.jobs[job]
        reply = self.call(
            "job_release",
            job_id=job,
            attempt=m["attempt"],
            reason=reason,
            now_ms=self.now,
            max_attempts=MAX_ATTEMPTS,
        )
        m["state"] = "queued"
        nm = self.nodes.get(m["node"])
        where = [m["node"], "gw", nm["conn"]] if nm and nm["record"] else [m["node"], "", ""]
        if m["attempt"] >= MAX_ATTEMPTS:
            assert reply == [2, m["attempt"], *where], reply
            self.end(job, "failed")
        else:
            assert reply == [1, m["attempt"] + 1, *where], reply
            self.place(job, m["attempt"] + 1)

    def new_registration(self, node: str, sets: list[list[str]]) -> None:
        self.serial += 1
        conn = f"c{self.serial}"
        known = self.nodes.get(node)
        reply = self.call(
            "register_node_v2",
            node_id=node,
            now_ms=self.now,
            ttl_ms=TTL,
            region=REGION,
            gpu_tier=GPU,
            lang_sets=sets,
            capacity=NODES[node],
            services={"asr": ["en", "ja", "zh"], "semantic": ["en", "ja", "zh"]},
            gateway_id="gw",
            conn_id=conn,
            acks=node not in NOT_ACKING,
        )
        refreshed = known is not None and known["record"]
        assert reply[0] == (2 if refreshed else 1), (node, reply)
        beat = self.call(
            "heartbeat_with_pool_assign",
            node_id=node,
            conn_id=conn,
            gateway_id="gw",
            now_ms=self.now,
        )
        assert beat[0] == 1, beat
        if not refreshed:
            self.gens[node] += 1  # a new registration: counters start from zero
        self.nodes[node] = {
            "gen": self.gens[node],
            "conn": conn,
            "connected": True,
            "sets": [sorted(s) for s in sets],
            "expiry": self.now + TTL,
            "record": True,
        }

    # -- rules: nodes ---------------------------------------------------------------------
    @initialize(sets=st.sampled_from(LANG_SETS))
    def start(self, sets: list[list[str]]) -> None:
        for session in SESSIONS:
            self.r.hset(self.k.session(session), mapping={"gateway_id": "gw-s", "conn_id": "cs"})
        for node in NODES:
            self.new_registration(node, sets)

    @rule(node=node_st, sets=st.sampled_from(LANG_SETS))
    def register(self, node: str, sets: list[list[str]]) -> None:
        """A (re-)registration, possibly with other language sets: pools follow."""
        self.new_registration(node, sets)

    @precondition(lambda self: self.nodes)
    @rule(i=pick, new_conn=st.booleans())
    def heartbeat(self, i: int, new_conn: bool) -> None:
        node = sorted(self.nodes)[i % len(self.nodes)]
        m = self.nodes[node]
        conn = m["conn"]
        if new_conn:
            self.serial += 1
            conn = f"c{self.serial}"
        reply = self.call(
            "heartbeat_with_pool_assign",
            node_id=node,
            conn_id=conn,
            gateway_id="gw",
            now_ms=self.now,
        )
        if not m["record"]:
            assert reply[0] == -2, reply  # told to register again
        elif not m["connected"] and conn == m["conn"]:
            assert reply[0] == -3, reply  # a beat from the connection reported dropped
        else:
            assert reply[0] == 1, reply
            m.update(conn=conn, connected=True, expiry=self.now + TTL)

    @precondition(lambda self: self.nodes)
    @rule(i=pick, how=st.sampled_from(["dropped", "graceful", "silent"]), tell=st.booleans())
    def crash(self, i: int, how: str, tell: bool) -> None:
        """The node's connection ends: a drop (pools kept), a goodbye, or silence (the node
        stops beating; only its TTL will tell). ``tell``: the dispatcher heard of it and takes
        its jobs back (node_lost)."""
        node = sorted(self.nodes)[i % len(self.nodes)]
        m = self.nodes[node]
        if how == "dropped":
            reply = self.call(
                "node_offline", node_id=node, mode="dropped", conn_id=m["conn"], now_ms=self.now
            )
            expect = 1 if m["record"] and m["connected"] else 0
            assert reply[0] == expect, (node, reply, m)
            m["connected"] = False
        elif how == "graceful":
            reply = self.call(
                "node_offline", node_id=node, mode="graceful", conn_id=m["conn"], now_ms=self.now
            )
            assert reply[0] == 1, reply
            del self.nodes[node]
        if how != "silent" and tell:
            for job in self.live():
                if self.jobs[job]["node"] == node:
                    self.take_back(job, "node_lost")

    @precondition(lambda self: self.nodes)
    @rule(i=pick, sets=st.sampled_from(LANG_SETS))
    def rejoin(self, i: int, sets: list[list[str]]) -> None:
        """A node says goodbye and registers again at once, in the same millisecond (another
        node-manager replica, or one batch): a new registration all the same, whose counters
        owe nothing to the jobs the old one still holds."""
        node = sorted(self.nodes)[i % len(self.nodes)]
        reply = self.call(
            "node_offline",
            node_id=node,
            mode="graceful",
            conn_id=self.nodes[node]["conn"],
            now_ms=self.now,
        )
        assert reply[0] == 1, reply
        del self.nodes[node]
        self.new_registration(node, sets)

    # -- rules: jobs ----------------------------------------------------------------------
    @rule(session=st.sampled_from(SESSIONS), pair=st.sampled_from(PAIRS))
    def select(self, session: str, pair: tuple[str, str]) -> None:
        self.serial += 1
        job = f"j{self.serial}"
        index = self.next_index[session]
        self.next_index[session] += 1
        reply = self.call(
            "job_create",
            request_key=f"{session}:{index}",
            job_id=job,
            now_ms=self.now,
            ttl_ms=SESSION_TTL,
            fields={"session_id": session, "utterance_index": index},
            audio="QUJD",
        )
        assert reply == [1, job], reply
        self.jobs[job] = {
            "state": "queued",
            "attempt": 0,
            "node": "",
            "gen": 0,
            "tried": set(),
            "pair": pair,
            "session": session,
            "index": index,
            "seq": 0,
        }
        self.place(job, 1)

    @precondition(lambda self: self.live(("assigned",)))
    @rule(i=pick, stale=st.sampled_from(["no", "attempt", "node"]))
    def ack(self, i: int, stale: str) -> None:
        jobs = self.live(("assigned",))
        job = jobs[i % len(jobs)]
        m = self.jobs[job]
        attempt, node = m["attempt"], m["node"]
        if stale == "attempt":
            attempt += 1
        elif stale == "node":
            node = next(n for n in NODES if n != node)
        reply = self.call(
            "job_ack",
            job_id=job,
            attempt=attempt,
            node_id=node,
            now_ms=self.now,
            deadline_ms=DEADLINE,
        )
        if stale != "no":
            assert reply[0] == -5, reply
            return
        assert reply[0] == 1, reply
        m["state"] = "acked"

    @precondition(lambda self: self.live())
    @rule(i=pick, outcome=st.sampled_from(["done", "failed"]), stale=st.booleans())
    def complete(self, i: int, outcome: str, stale: bool) -> None:
        jobs = self.live()
        job = jobs[i % len(jobs)]
        m = self.jobs[job]
        attempt = m["attempt"] - 1 if stale else m["attempt"]
        # the session's jobs that reached the node before this one (the gateway lists them)
        earlier = [
            j
            for j, other in self.jobs.items()
            if other["state"] in ("assigned", "acked")
            and other["session"] == m["session"]
            and (other["node"], other["gen"]) == (m["node"], m["gen"])
            and other["seq"] < m["seq"]
        ]
        reply = self.call(
            "job_finish",
            job_id=job,
            attempt=attempt,
            node_id=m["node"],
            now_ms=self.now,
            outcome=outcome,
            payload={"type": "translation_result", "job_id": job},
            gap_ms=GAP,
            session_ttl_ms=SESSION_TTL,
            earlier=[(j, self.jobs[j]["attempt"]) for j in earlier],
        )
        if stale:
            assert reply[0] == -5, reply
            return
        assert reply[0] in (1, 3), reply
        self.deliver(m["session"], reply)
        m["state"] = outcome
        for j in earlier:  # ended with it, without a result
            self.jobs[j]["state"] = "done"

    @precondition(lambda self: self.live())
    @rule(i=pick, reason=st.sampled_from(["refused", "unroutable"]))
    def release(self, i: int, reason: str) -> None:
        jobs = self.live()
        self.take_back(jobs[i % len(jobs)], reason)

    # -- rules: time ----------------------------------------------------------------------
    @rule(ms=st.sampled_from([0, 1, 1_000, LEASE, DEADLINE, GAP, TTL + 1]))
    def advance(self, ms: int) -> None:
        """Time passes: records whose TTL ended vanish, as Redis would delete them."""
        self.now += ms
        for node, m in self.nodes.items():
            if m["record"] and m["expiry"] <= self.now:
                self.r.delete(self.k.node(node))
                m["record"] = False

    @rule()
    def sweep(self) -> None:
        """The node-manager sweeper: node_offline expired for every node due in nodes:expiry."""
        due = self.r.zrangebyscore(self.k.nodes_expiry, "-inf", self.now)
        for node in due:
            reply = self.call("node_offline", node_id=node, mode="expired", now_ms=self.now)
            assert reply[0] == 1, (node, reply)
            del self.nodes[node]
        gone = {n for n, m in self.nodes.items() if m["expiry"] <= self.now}
        assert not gone, f"expired nodes the sweep did not find: {gone}"

    @rule()
    def fire_timers(self) -> None:
        """Due job timers, handled as the dispatcher does (lease end, deadline)."""
        due = self.call("timers_claim", now_ms=self.now, claim_ms=5_000, limit=100)
        for job in due:
            m = self.jobs[job]
            if m["state"] == "assigned":
                self.take_back(job, "ack_timeout")
            elif m["state"] == "acked":
                self.take_back(job, "deadline")
            else:
                raise AssertionError(f"timer of {job} in state {m['state']}")

    @rule()
    def expire_gaps(self) -> None:
        for session in self.r.zrangebyscore(self.k.gaps, "-inf", self.now):
            reply = self.call(
                "gap_expire",
                session_id=session,
                now_ms=self.now,
                gap_ms=GAP,
                session_ttl_ms=SESSION_TTL,
            )
            self.deliver(session, reply)

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def slots_within_capacity_and_equal_to_leases(self) -> None:
        for node, capacity in NODES.items():
            h = self.r.hgetall(self.k.node(node))
            m = self.nodes.get(node)
            if m is None or not m["record"]:
                assert not h, (node, h)
                continue
            running, reserved = int(h["running"]), int(h["reserved"])
            assert running >= 0 and reserved >= 0, (node, h)
            assert running + reserved <= int(h["capacity"]) == capacity, (node, h)
            assert (reserved, running) == (self.held(node, "assigned"), self.held(node, "acked")), (
                node,
                h,
                {j: v for j, v in self.jobs.items() if v["node"] == node},
            )

    @invariant()
    def every_lease_belongs_to_one_live_attempt(self) -> None:
        holders: dict[str, str] = {}
        for node in NODES:
            for job in self.r.smembers(self.k.node_jobs(node)):
                assert job not in holders, f"{job} leased on {holders[job]} and {node}"
                holders[job] = node
                state, holder, attempt = self.r.hmget(
                    self.k.job(job), "state", "node_id", "attempt"
                )
                m = self.jobs[job]
                assert state in ("assigned", "acked") and holder == node, (node, job, state)
                assert (state, holder, int(attempt)) == (m["state"], m["node"], m["attempt"])
        assert sorted(holders) == self.live(), "a lease for exactly the jobs holding one"
        assert set(self.r.zrange(self.k.timers, 0, -1)) == set(self.live())

    @invariant()
    def pools_agree_with_node_records(self) -> None:
        k = self.k
        expected_members: dict[str, set[str]] = {}
        for node, m in self.nodes.items():
            shards = {shard_of(langs) for langs in m["sets"]}
            assert self.r.smembers(k.node_pools(node)) == shards, node
            if not m["record"]:
                continue  # expired: the sweeper (or a selection, lazily) takes it out
            h = self.r.hmget(k.node(node), "running", "reserved", "connected")
            score = load_score(int(h[0]), int(h[1]), NODES[node], h[2] == "1")
            for shard in shards:
                expected_members.setdefault(shard, set()).add(node)
                assert self.r.zscore(k.pool(shard), node) == pytest.approx(score), (node, shard)
        for node in set(NODES) - set(self.nodes):
            assert not self.r.exists(k.node_pools(node), k.node(node)), node
        index = self.r.smembers(k.pools_index)
        for shard in index:
            members = set(self.r.zrange(k.pool(shard), 0, -1))
            assert members, f"empty shard {shard} still indexed"
            assert expected_members.get(shard, set()) <= members <= set(self.nodes), shard
            langset, region, gpu, n = shard.split(":")
            count = self.r.hget(k.pool_group(langset, region, gpu), n)
            assert int(count or 0) == len(members), (shard, count, members)
            for a, b in permutations(langset.split("_"), 2):
                assert shard in self.r.smembers(k.pair(a, b)), (shard, a, b)
        assert set(expected_members) <= index
        for key in self.r.keys(k.prefix.replace("{", "[{]") + "pair:*"):
            assert self.r.smembers(key) <= index, key

    @invariant()
    def each_index_delivered_at_most_once(self) -> None:
        for session, indexes in self.delivered.items():
            assert len(indexes) == len(set(indexes)), (session, indexes)


@pytest.mark.timeout(600)  # passing takes seconds; shrinking a failure can take minutes
def test_scheduling_state_keeps_its_invariants_under_any_event_sequence(redis_url: str) -> None:
    SchedulingModel.url = redis_url
    run_state_machine_as_test(
        SchedulingModel,
        settings=settings(
            max_examples=int(os.environ.get("LINGUA_MODEL_EXAMPLES", "100")),
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
