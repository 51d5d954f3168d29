"""Every Redis key of the scheduler, built in one place (requirement N9).

All keys live under ``lingua:v1:`` and carry one hash tag, ``{<cell>}``, so every key a Lua
script touches is in one Redis Cluster slot. A *cell* is one scheduling domain (default
``main``); the cell is the unit a Redis Cluster shards by. A script given :func:`Keys.prefix`
as a KEYS entry builds the keys it computes (pools, pair index, jobs, sessions) from it, with
the same layout as here, and its header lists them (``built from KEYS[i]``);
``shared/tests/test_keys.py`` and ``shared/tests/test_script_keys.py`` pin them together.

Layout (``P`` = ``lingua:v1:{cell}:``)::

    P node:<id>                       hash  node record; PEXPIRE = liveness TTL (schedulable)
    P node:<id>:pools                 set   pool shard ids the node is a member of
    P nodes:all                       set   ids of every registered node
    P nodes:expiry                    zset  node id -> logical expiry (ms); the sweeper's index
    P nodes:connected                 zset  display view of "connected": node id -> last seen ms
    P pool:<langset>:<region>:<gpu>:<shard>   zset  members scored by load (docs/architecture.md)
    P poolgroup:<langset>:<region>:<gpu>      hash  shard id -> member count
    P pools:index                     set   every pool shard id in use
    P pair:<src>:<tgt>                set   pool shard ids whose language set covers src->tgt
    P pairbest:<src>:<tgt>            zset  the shards of pair:<src>:<tgt> by their lowest free
                                            band-0 score (1e9 = none free): the best shard is
                                            one lookup
    P bands                           hash  restriction class -> score band (c:<class>), band ->
                                            class (b:<n>), latest cool-down end (u:<n>), count n
    P gateway:<instance>              string liveness of a gateway replica (TTL)

    job path:
    P session:<sid>                   hash  gateway_id, conn_id, mode, langs, affinity (TTL)
    P session:<sid>:results           hash  utterance index -> outcome waiting for its turn
      (first-come sessions: session:<sid>:sent, a set of the answered indices above
      next_deliver)
    P session:<sid>:waiting           zset  utterance index -> when its outcome became ready
                                            (ordered: a hole's deadline runs from the oldest)
    P session:<sid>:outbox            hash  utterance index -> outcome due to the client, kept
                                            until a gateway wrote it to the client (TTL)
    P outbox                          zset  session id -> when its oldest unacknowledged
                                            outcomes were (last) published
    P job:<job_id>                    hash  job record and state machine (TTL)
    P job:<job_id>:audio              string the utterance audio, kept for redispatch (TTL)
    P idem:<request_key>              string job id of a request key (J2, TTL)
    P node:<id>:jobs                  set   job ids holding a lease on the node
    P timers                          zset  job id -> when its lease / wait ends
    P gaps                            zset  session id -> when its missing result times out
    P stats:exclusions                hash  selection exclusion reason -> count
    P stats:unserved                  hash  "<src>:<tgt>" -> requests no pool covers
    P stats:sec:<epoch_s>             hash  one second of job counters and latency buckets
    P stats:recent_errors             list  the latest typed errors sent to clients (JSON)
    P stats:fallbacks                 hash  cell -> sessions of this cell's regions placed in
                                            that cell instead (lingua_shared.cells)
    P sessions:active                 zset  session id -> last activity ms (display)

A *pool shard id* is ``<langset>:<region>:<gpu>:<shard>`` where ``langset`` is the sorted
languages joined by ``_`` (``en_ja_zh``; codes such as ``pt-br`` keep their ``-``).
:meth:`Keys.parse_shard_id` reads one by the rule ``is_shard_id`` in ``lua/lib/common.lua``
applies (``shared/tests/test_lang_rule.py`` checks they agree): 2 to 8 language codes
(``lingua_shared.protocol.langs``) joined by ``_``, region and gpu tier labels of 1 to 64
``[a-z0-9_.-]`` starting with a letter or digit, and a shard number without leading zeros.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lingua_shared.protocol.langs import MAX_LANGS_PER_SET, is_lang

ROOT = "lingua:v1:"
KEY_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # is_label in lua/lib/common.lua
SHARD_NO_RE = re.compile(r"0|[1-9][0-9]{0,8}")


class InvalidShardId(ValueError):
    """A string that is not a pool shard id (a corrupt ``pools:index`` entry, say)."""


def is_langset_id(value: str) -> bool:
    """2 to 8 language codes joined by ``_`` (what ``is_shard_id`` accepts as a set)."""
    langs = value.split("_")
    return 2 <= len(langs) <= MAX_LANGS_PER_SET and all(is_lang(x) for x in langs)


def selection_pair(
    mode: str, src: str, tgt: str, lang_a: str | None, lang_b: str | None
) -> tuple[str, str]:
    """The pair a session's jobs select on (``pair:<src>:<tgt>``): two-way sessions select on
    {lang_a, lang_b} (the set must cover both directions)."""
    if mode == "two_way_auto" and lang_a and lang_b:
        return lang_a, lang_b
    return src, tgt


def langset_id(langs: list[str]) -> str:
    """Canonical id of a language set: sorted, de-duplicated, joined by ``_``."""
    return "_".join(sorted(set(langs)))


@dataclass(frozen=True)
class Keys:
    cell: str = "main"

    @property
    def prefix(self) -> str:
        return f"{ROOT}{{{self.cell}}}:"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_pools(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:pools"

    def node_retired(self, node_id: str) -> str:
        """The replaced and ended connections of a removed record (lib/fence.lua)."""
        return f"{self.prefix}node:{node_id}:retired"

    @property
    def nodes_all(self) -> str:
        return f"{self.prefix}nodes:all"

    @property
    def nodes_expiry(self) -> str:
        return f"{self.prefix}nodes:expiry"

    @property
    def nodes_connected(self) -> str:
        return f"{self.prefix}nodes:connected"

    def pool(self, shard_id: str) -> str:
        return f"{self.prefix}pool:{shard_id}"

    def pool_group(self, langset: str, region: str, gpu_tier: str) -> str:
        return f"{self.prefix}poolgroup:{langset}:{region}:{gpu_tier}"

    @property
    def pools_index(self) -> str:
        return f"{self.prefix}pools:index"

    def pair(self, src: str, tgt: str) -> str:
        return f"{self.prefix}pair:{src}:{tgt}"

    def pair_best(self, src: str, tgt: str) -> str:
        return f"{self.prefix}pairbest:{src}:{tgt}"

    @property
    def bands(self) -> str:
        return f"{self.prefix}bands"

    def gateway(self, instance_id: str) -> str:
        return f"{self.prefix}gateway:{instance_id}"

    def heartbeats_applied(self, instance_id: str) -> str:
        """The sequence number of the last heartbeat batch of this gateway replica that
        node-manager applied (``heartbeats_applied.lua``): the gateway's flow control."""
        return f"{self.prefix}heartbeats:applied:{instance_id}"

    @property
    def heartbeats_covered(self) -> str:
        """Hash: gateway replica -> its heartbeat watermark (ms): every beat it read before
        then is applied (``heartbeats_applied.lua``); the expiry sweeper waits for it."""
        return f"{self.prefix}heartbeats:covered"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def session_results(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}:results"

    def session_sent(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}:sent"

    def session_waiting(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}:waiting"

    def session_outbox(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}:outbox"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}outbox"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def job_audio(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:audio"

    def idem(self, request_key: str) -> str:
        return f"{self.prefix}idem:{request_key}"

    def node_jobs(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:jobs"

    @property
    def timers(self) -> str:
        return f"{self.prefix}timers"

    @property
    def gaps(self) -> str:
        return f"{self.prefix}gaps"

    @property
    def exclusions(self) -> str:
        return f"{self.prefix}stats:exclusions"

    @property
    def unserved(self) -> str:
        return f"{self.prefix}stats:unserved"

    def stats_second(self, epoch_s: int) -> str:
        return f"{self.prefix}stats:sec:{epoch_s}"

    @property
    def fallbacks(self) -> str:
        """Hash: cell -> sessions of this cell placed in that cell instead (the ladder)."""
        return f"{self.prefix}stats:fallbacks"

    @property
    def recent_errors(self) -> str:
        return f"{self.prefix}stats:recent_errors"

    @property
    def sessions_active(self) -> str:
        return f"{self.prefix}sessions:active"

    @staticmethod
    def shard_id(langset: str, region: str, gpu_tier: str, shard: int) -> str:
        return f"{langset}:{region}:{gpu_tier}:{shard}"

    @staticmethod
    def parse_shard_id(shard_id: str) -> tuple[str, str, str, int]:
        """``(langset, region, gpu_tier, shard)``; :class:`InvalidShardId` for anything else."""
        parts = shard_id.split(":")
        if len(parts) == 4:
            langset, region, gpu, shard = parts
            if (
                is_langset_id(langset)
                and KEY_LABEL_RE.fullmatch(region)
                and KEY_LABEL_RE.fullmatch(gpu)
                and SHARD_NO_RE.fullmatch(shard)
            ):
                return langset, region, gpu, int(shard)
        raise InvalidShardId(f"not a pool shard id: {shard_id[:80]!r}")
