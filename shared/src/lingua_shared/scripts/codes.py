"""Every outcome of every Lua script, in one enum.

A script answers ``{code, ...}``; the code means something only together with the script
(``2`` is "refreshed" for ``register_node_v2``, "duplicate" for ``job_create``, "no attempt
left" for ``job_release``). Each member is one (script, code) outcome: its value compares
equal to the integer code (``ScriptCode.NO_NODE == -4``), and it carries the scripts that
answer it, what it means and, where one applies, the exception it maps to. A script's
``parse()`` turns its reply's code into the member with :meth:`ScriptCode.of` and raises the
exception of the outcomes marked ``raised`` (only ``INVALID_INPUT``); the others are results
that the caller decides on. Since members compare as their integer, a result's code is
compared with the members of its own script only (``FINISHED`` and ``GAP_ANSWERED`` are both
``1``; a set of members keeps one per integer). Every script header's ``Returns:`` lists
exactly its members (``shared/tests/test_script_contract.py``).

``timers_claim`` and ``nodes_read`` answer a plain list on success, so their only code is
``INVALID_INPUT``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from lingua_shared.errors import LinguaError, NodeNotRegistered, ScriptRejected

ALL = (
    "register_node_v2",
    "heartbeat_with_pool_assign",
    "node_offline",
    "nodes_read",
    "nodes_summary",
    "pools_summary",
    "job_create",
    "select_node",
    "job_ack",
    "job_finish",
    "job_release",
    "gap_expire",
    "timers_claim",
    "service_cooldown",
    "utterance_fail",
    "outbox_ack",
    "outbox_claim",
    "session_bind",
    "node_lost",
    "slots_reconcile",
    "heartbeats_applied",
    "heartbeat_batch",
)
JOB_SCRIPTS = ("select_node", "job_ack", "job_finish", "job_release")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ScriptCode(IntEnum):
    """One member per (script, code) outcome; compares equal to its integer code."""

    scripts: tuple[str, ...]
    meaning: str
    exception: type[LinguaError] | None
    raised: bool

    def __new__(
        cls,
        code: int,
        scripts: tuple[str, ...],
        meaning: str,
        exception: type[LinguaError] | None = None,
        raised: bool = False,
    ) -> ScriptCode:
        member = int.__new__(cls, code)
        member._value_ = (code, scripts)  # members sharing a code stay distinct
        member.scripts = scripts
        member.meaning = meaning
        member.exception = exception
        member.raised = raised
        return member

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {int(self)}>"

    # -- every script ------------------------------------------------------------------------
    INVALID_INPUT = (
        -1,
        ALL,
        "invalid input, nothing written; the reply names the bad argument",
        ScriptRejected,
        True,
    )
    # -- register_node_v2 --------------------------------------------------------------------
    CREATED = (1, ("register_node_v2",), "a new node record was written")
    REFRESHED = (
        2,
        ("register_node_v2",),
        "an existing record was refreshed; the reply names the connection it replaced",
    )
    CONN_REPLACED = (
        -3,
        ("register_node_v2",),
        "a newer connection replaced this one (a late registration of a connection already "
        "gone): nothing written",
    )
    # -- heartbeat_with_pool_assign ------------------------------------------------------------
    ALIVE = (
        1,
        ("heartbeat_with_pool_assign",),
        "liveness and load refreshed; the reply says whether pool membership changed",
    )
    NOT_REGISTERED = (
        -2,
        ("heartbeat_with_pool_assign",),
        "no live node record: the node must register again (node-manager asks its gateway)",
        NodeNotRegistered,
    )
    STALE = (
        -3,
        ("heartbeat_with_pool_assign",),
        "a beat on a connection already reported dropped, or replaced by a newer one: "
        "ignored, nothing written",
    )
    # -- node_offline ----------------------------------------------------------------------------
    OFFLINE = (
        1,
        ("node_offline",),
        "done: removed with its pools (graceful, expired) or unschedulable (dropped)",
    )
    ALREADY_GONE = (0, ("node_offline",), "nothing to do: the node is gone or already dropped")
    STALE_CONN = (-2, ("node_offline",), "a newer connection owns the node: nothing written")
    NOT_EXPIRED = (-3, ("node_offline",), "expired mode, but the node is alive: nothing written")
    # -- read-only summaries --------------------------------------------------------------------
    SUMMED = (1, ("nodes_summary", "pools_summary"), "the totals follow")
    # -- job_create ------------------------------------------------------------------------------
    JOB_CREATED = (1, ("job_create",), "the job was created with its audio and request key")
    DUPLICATE = (
        2,
        ("job_create",),
        "the request key already has a job (the reply names it): nothing written",
    )
    # -- select_node -----------------------------------------------------------------------------
    RESERVED = (
        1,
        ("select_node",),
        "a node's slot is taken for the attempt (or the same reservation again on a replay)",
    )
    NO_NODE = (
        -4,
        ("select_node",),
        "no eligible node with a free slot (no_covering_pool | no_free_slot); when the job "
        "waits, a timer retries it",
    )
    NOT_WAITING = (
        -5,
        ("select_node",),
        "the job is not waiting for a node (assigned, acked, done, a newer attempt): nothing "
        "written",
    )
    # -- job_ack ---------------------------------------------------------------------------------
    COMMITTED = (1, ("job_ack",), "the reservation became a running slot")
    ALREADY_ACKED = (
        0,
        ("job_ack",),
        "already running (a replay, or a job accepted at assignment)",
    )
    # -- job_finish ------------------------------------------------------------------------------
    FINISHED = (
        1,
        ("job_finish",),
        "finished and its slot freed; the session's outcomes now due follow",
    )
    ALREADY_FINISHED = (0, ("job_finish",), "a replay or a duplicate result: nothing written")
    ANSWERED_BEFORE = (
        3,
        ("job_finish",),
        "finished, but its index was already answered (a missing_result): nothing to send",
    )
    # -- job_release -----------------------------------------------------------------------------
    RELEASED = (1, ("job_release",), "taken back: dispatch it again with the next attempt")
    EXHAUSTED = (
        2,
        ("job_release",),
        "taken back with no attempt left: finish it with a typed error",
    )
    NOT_CURRENT = (
        0,
        ("job_release",),
        "that attempt is no longer current (a replay or a race): nothing to do",
    )
    # -- node_lost -------------------------------------------------------------------------------
    JOBS_TAKEN = (
        1,
        ("node_lost",),
        "the node's jobs were taken back; each with its next attempt, or its last (fail it)",
    )
    NEWER_CONNECTION = (
        0,
        ("node_lost",),
        "the node's record names a newer connection: its jobs stay, nothing written",
    )
    # -- slots_reconcile -------------------------------------------------------------------------
    RECOUNTED = (
        1,
        ("slots_reconcile",),
        "the nodes' counts match their live jobs; the reply says how many were rewritten",
    )
    # -- shared by the job scripts --------------------------------------------------------------
    STALE_JOB = (
        -5,
        ("job_ack", "job_finish"),
        "another attempt, another node, or not in that state: dropped and counted",
    )
    NO_SUCH_JOB = (-6, JOB_SCRIPTS, "the job record is gone (expired or never created)")
    # -- gap_expire ------------------------------------------------------------------------------
    GAP_ANSWERED = (
        1,
        ("gap_expire",),
        "the overdue index is answered with missing_result; what is then due follows",
    )
    NO_GAP = (0, ("gap_expire",), "nothing to do: no hole, or its deadline has not passed")
    # -- service_cooldown ------------------------------------------------------------------------
    COOLING = (1, ("service_cooldown",), "the cool-down is set or extended; its end follows")
    NO_SUCH_NODE = (0, ("service_cooldown",), "no such node: nothing written")
    # -- utterance_fail --------------------------------------------------------------------------
    ANSWERED = (
        1,
        ("utterance_fail",),
        "the answer takes its place in the delivery; what is then due follows",
    )
    ALREADY_ANSWERED = (
        0,
        ("utterance_fail",),
        "the index is answered already, or an answer waits for it: nothing written",
    )
    NO_SUCH_SESSION = (
        -6,
        ("utterance_fail", "session_bind"),
        "the session record is gone: nothing written",
    )
    # -- outbox_ack / outbox_claim -------------------------------------------------------------
    ACKED = (
        1,
        ("outbox_ack",),
        "those outcomes left the session's outbox; the reply says how many are left",
    )
    CLAIMED = (
        1,
        ("outbox_claim",),
        "the claimed sessions follow (maybe none), each with its unacknowledged outcomes",
    )
    # -- heartbeat_batch ----------------------------------------------------------------------
    BATCH_APPLIED = (
        1,
        ("heartbeat_batch",),
        "every beat was applied as heartbeat_with_pool_assign applies one; its replies follow",
    )
    # -- heartbeats_applied ------------------------------------------------------------------
    APPLIED_MARKED = (
        1,
        ("heartbeats_applied",),
        "the gateway's applied mark is the largest sequence number seen, which follows",
    )
    # -- session_bind ----------------------------------------------------------------------------
    RESUMED = (
        1,
        ("session_bind",),
        "bound to the new connection; the old binding, the record, the answered set and the "
        "outbox follow",
    )
    UNBOUND = (2, ("session_bind",), "the connection's binding is removed")
    NOT_BOUND = (
        0,
        ("session_bind",),
        "unbind: the session is bound to another connection (or none): nothing written",
    )
    FOREIGN_SESSION = (
        -5,
        ("session_bind",),
        "resume: another client opened the session: nothing written",
    )

    @classmethod
    def of(cls, script: str, code: int) -> ScriptCode:
        """The outcome ``code`` of ``script``; ``ValueError`` for a code it never answers."""
        try:
            return _BY_SCRIPT[script][int(code)]
        except KeyError:
            raise ValueError(f"{script} answers no code {code}") from None

    @classmethod
    def for_script(cls, script: str) -> dict[int, ScriptCode]:
        """Every outcome of ``script`` by code."""
        return dict(_BY_SCRIPT.get(script, {}))

    def error(self, script: str, detail: Any = "") -> LinguaError:
        """The exception this outcome maps to (``TypeError`` when none applies)."""
        if self.exception is None:
            raise TypeError(f"{self!r} maps to no exception")
        if self.exception is ScriptRejected:
            field = _s(detail)
            return ScriptRejected(f"{script}: invalid {field}", {"field": field})
        return self.exception(f"{script}: {self.meaning}", {"detail": _s(detail)})


_BY_SCRIPT: dict[str, dict[int, ScriptCode]] = {}
for _member in ScriptCode:
    for _script in _member.scripts:
        _BY_SCRIPT.setdefault(_script, {})[int(_member)] = _member


def check(script: str, reply: list[Any]) -> ScriptCode:
    """The outcome of a ``{code, ...}`` reply; raises the exception of a ``raised`` one
    (``INVALID_INPUT`` -> :class:`ScriptRejected` naming the bad argument)."""
    code = ScriptCode.of(script, int(reply[0]))
    if code.raised:
        raise code.error(script, reply[1] if len(reply) > 1 else "")
    return code
