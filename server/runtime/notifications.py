"""One pub/sub subscription per process, shared by everything that must hear of changes elsewhere.

Handlers are registered per channel; ``on_connect`` callbacks run after every (re)subscription (after
a lost connection, or a Sentinel failover: the pool moved to the new primary), so
whatever was announced while the connection was down is caught up by re-reading state (generation
numbers), and every ``resync_seconds`` without a message as a cheap safety net. Each subscription and
each notice received is counted (``syndicate_pubsub_subscriptions_total``,
``syndicate_pubsub_notices_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.core.redis_connection import on_current_primary
from server.observability.metrics import Metrics

log = logging.getLogger(__name__)


class Subscriber:
    def __init__(self, redis: Redis, metrics: Metrics, resync_seconds: float = 1.0) -> None:
        self.redis = redis
        self.metrics = metrics
        self.resync_seconds = resync_seconds
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task | None = None
        self._stopping = False

    def on(self, channel: str, handler: Callable[[str], None], resync: Callable[[], Awaitable[None]]) -> None:
        self._handlers[channel] = handler
        self._on_connect.append(resync)

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._listen(ready))
        await asyncio.wait_for(ready.wait(), timeout=10)

    async def stop(self) -> None:
        # redis-py's pub/sub read may swallow a cancellation, so the loop also checks a flag.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self._task, timeout=self.resync_seconds + 1)

    async def _resync(self) -> None:
        for resync in self._on_connect:
            await resync()

    async def _listen(self, ready: asyncio.Event) -> None:
        delay = 0.1
        while not self._stopping:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                self.metrics.subscribed(self._handlers)
                await self._resync()
                ready.set()
                delay = 0.1
                while not self._stopping:
                    message = await pubsub.get_message(timeout=self.resync_seconds)
                    if message is None:
                        if pubsub.connection is not None and not on_current_primary(self.redis.connection_pool,
                                                                                    pubsub.connection):
                            # With Sentinel: the primary moved (the pool no longer owns a connection
                            # to the old one); subscribe again on the new one, and resync.
                            raise RedisConnectionError("the primary moved")
                        await self._resync()
                    elif message.get("type") == "message":
                        handler = self._handlers.get(message["channel"])
                        if handler is not None:
                            self.metrics.notice_received(message["channel"])
                            handler(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub subscription lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
