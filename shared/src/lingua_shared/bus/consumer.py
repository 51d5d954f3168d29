"""Consuming: the one way every service takes messages off a queue.

Through :func:`consume`: undecodable -> dead-lettered at once; a handler exception ->
requeued, and the queue's delivery limit dead-letters a poison message; a dependency outage
(Redis down) is retried in place and does not count against that limit. A batch
(:data:`~lingua_shared.bus.publisher.BATCH_TYPE`) is handled item by item with the same rules:
an invalid item is dead-lettered alone, a failed item is published back to its queue alone
(where the delivery limit counts its tries), then the batch is acked; nothing in it is lost
with a bad neighbour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lingua_shared.bus.publisher import BATCH_TYPE, Publisher
from lingua_shared.errors import DependencyDown, LinguaError
from lingua_shared.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# A handler failing with one of these failed because a dependency is away, not because the
# message is bad: requeueing at once would spend the delivery limit within milliseconds and
# dead-letter good messages (a job result during a 2 s Redis outage).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DependencyDown,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)
TRANSIENT_RETRY_S = 30.0  # retried in place this long, then requeued (one delivery spent)
TRANSIENT_BACKOFF_S = (0.05, 1.0)  # first and longest pause between two tries


Handler = Callable[[T, AbstractIncomingMessage], Awaitable[None]]


class InFlight:
    """How many deliveries are being handled right now, so a stopping service can cancel its
    consumers and then let these finish (and be acked after their work) before it closes
    the channel. Each delivery runs in its own task, so without this the close would cancel
    them half-way: nothing would be lost (unacked deliveries return to the queue) but the
    work would be thrown away and done again by another replica."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """``False`` when deliveries are still being handled after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def consume(
    queue: AbstractQueue,
    adapter: TypeAdapter[T],
    handler: Handler[T],
    *,
    name: str,
    on_outcome: Callable[[str], None] | None = None,
    inflight: InFlight | None = None,
    transient_retry_s: float = TRANSIENT_RETRY_S,
    publisher: Publisher | None = None,
) -> str:
    """Attach ``handler`` to ``queue`` with explicit ack/nack/reject; returns the consumer tag.

    invalid body -> reject without requeue (dead-lettered); handler exception -> nack with
    requeue (the queue's delivery limit dead-letters a poison message); a transient error
    (:data:`TRANSIENT_ERRORS`) -> the handler is tried again with backoff for up to
    ``transient_retry_s`` before the nack; success -> ack. Handlers are idempotent (they
    already are under redelivery), so running one again is safe. ``inflight`` counts the
    deliveries being handled (see :class:`InFlight`).

    A batch (``type`` :data:`BATCH_TYPE`) runs its messages concurrently, each by those rules;
    with a ``publisher``, an invalid one is dead-lettered alone and a failed one published
    back to ``queue`` alone before the batch is acked. Without one, any failure requeues the
    whole batch (its good messages run again: handlers are idempotent).
    """

    def outcome(o: str) -> None:
        if on_outcome is not None:
            on_outcome(o)

    async def on_message(message: AbstractIncomingMessage) -> None:
        handle = handle_batch if message.type == BATCH_TYPE else handle_one
        if inflight is None:
            await handle(message)
            return
        with inflight:
            await handle(message)

    def invalid(exc: ValidationError) -> None:
        log.error(
            "bus.invalid_message",
            consumer=name,
            errors=exc.error_count(),
            first_error=str(exc.errors()[0]["msg"]) if exc.errors() else "",
        )
        outcome("invalid")

    async def run(msg: T, message: AbstractIncomingMessage) -> Exception | None:
        """Run the handler, retrying transient errors in place; the error to requeue for."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + transient_retry_s
        pause, longest = TRANSIENT_BACKOFF_S
        tries = 0
        while True:
            tries += 1
            try:
                await handler(msg, message)
                break
            except TRANSIENT_ERRORS as exc:
                if loop.time() + pause > give_up:
                    failed: Exception = exc
                else:
                    if tries == 1:
                        log.warning("bus.dependency_down_retrying", consumer=name, error=repr(exc))
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, longest)
                    continue
            except Exception as exc:
                failed = exc
            log.warning(
                "bus.handler_failed",
                consumer=name,
                error=repr(failed),
                redelivered=message.redelivered,
                tries=tries,
            )
            outcome("requeued")
            return failed
        if tries > 1:
            log.info("bus.dependency_back", consumer=name, tries=tries)
        outcome("ok")
        return None

    async def handle_one(message: AbstractIncomingMessage) -> None:
        try:
            msg = adapter.validate_json(message.body)
        except ValidationError as exc:
            invalid(exc)
            await message.reject(requeue=False)
            return
        try:
            failed = await run(msg, message)
        except asyncio.CancelledError:
            await message.nack(requeue=True)
            raise
        if failed is not None:
            await message.nack(requeue=True)
        else:
            await message.ack()

    async def handle_item(raw: Any, message: AbstractIncomingMessage) -> tuple[str, Any]:
        try:
            msg = adapter.validate_python(raw)
        except ValidationError as exc:
            invalid(exc)
            return "invalid", raw
        failed = await run(msg, message)
        return ("failed", raw) if failed is not None else ("ok", None)

    async def handle_batch(message: AbstractIncomingMessage) -> None:
        try:
            items = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            items = None
        if not isinstance(items, list):
            log.error("bus.invalid_batch", consumer=name, size=len(message.body))
            outcome("invalid")
            await message.reject(requeue=False)
            return
        try:
            results = await asyncio.gather(*(handle_item(raw, message) for raw in items))
        except asyncio.CancelledError:
            await message.nack(requeue=True)
            raise
        left = [(what, raw) for what, raw in results if what != "ok"]
        if not left:
            await message.ack()
            return
        if publisher is None:
            await message.nack(requeue=True)
            return
        try:
            for what, raw in left:
                body = orjson.dumps(raw)
                if what == "invalid":
                    await publisher.dead_letter(body, "invalid")
                else:
                    kind = raw.get("kind") if isinstance(raw, dict) else None
                    await publisher.resend(
                        queue.name, body, kind if isinstance(kind, str) else None
                    )
        except (TimeoutError, LinguaError) as exc:
            # the broker would not take them: the whole batch comes back instead
            log.warning("bus.batch_resend_failed", consumer=name, error=repr(exc))
            await message.nack(requeue=True)
            return
        log.info("bus.batch_items_resent", consumer=name, items=len(left), of=len(items))
        await message.ack()

    return await queue.consume(on_message)
