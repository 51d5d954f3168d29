"""A dispatcher that dies between reserve and send (J3), as a process the test SIGKILLs.

It does what :meth:`lingua_dispatcher.jobs.Jobs.on_request` does up to the reservation, with
the same scripts and arguments: ``job_create``, then ``select_node`` for attempt 1. It prints
``reserved <job_id> <node_id>`` and waits to be killed before it would publish the job_assign.

    python half_dispatch.py REDIS_URL CELL SESSION_ID LEASE_MS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts


async def main(url: str, cell: str, session_id: str, lease_ms: int) -> None:
    redis = Redis.from_url(url)
    keys = Keys(cell)
    scripts = await Scripts.load(redis, keys)
    session = await redis.hgetall(keys.session(session_id))
    gateway_id = session[b"gateway_id"].decode()
    conn_id = session[b"conn_id"].decode()
    job_id = f"j-{uuid.uuid4().hex[:16]}"
    now = int(time.time() * 1000)
    fields = {
        "session_id": session_id, "utterance_index": "0", "mode": "one_way",
        "src_lang": "zh", "tgt_lang": "en", "lang_a": "", "lang_b": "",
        "pair_src": "zh", "pair_tgt": "en", "audio_format": "pcm16", "sample_rate": "16000",
        "pipeline": {"use_tts": False}, "trace_id": uuid.uuid4().hex,
        "gateway_id": gateway_id, "conn_id": conn_id, "received_at_ms": str(now),
    }  # fmt: skip
    created = await scripts.job_create(
        request_key=f"{session_id}:0", job_id=job_id, now_ms=now, ttl_ms=600_000,
        fields=fields, audio="AQABAAEAAQA=",
    )  # fmt: skip
    assert created.code == 1, created
    sel = await scripts.select_node(
        job_id=job_id, attempt=1, now_ms=int(time.time() * 1000), lease_ms=lease_ms,
        pair_src="zh", pair_tgt="en", services=["asr", "semantic"], policy="pack",
        candidates=8, wait_until_ms=0, retry_ms=100,
    )  # fmt: skip
    assert sel.code == 1, sel
    print("reserved", job_id, sel.node_id, json.dumps({"gateway": sel.gateway_id}), flush=True)
    await asyncio.sleep(3600)  # the crash comes here, before the job_assign is published


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
