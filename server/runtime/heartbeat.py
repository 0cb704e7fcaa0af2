"""This process's heartbeat: its metrics snapshot (and, when it runs push, its worker heartbeat)
published to Redis every ``heartbeat_seconds``, for ``/metrics`` and ``/readyz`` on any process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from server.core import keys
from server.observability.metrics import HEARTBEAT_LIVES, Metrics
from server.runtime.jobs import PeriodicJob

log = logging.getLogger(__name__)


class Heartbeat(PeriodicJob):
    """A beat at start (before the process takes requests) and every ``interval``; on the way out the
    worker heartbeat is withdrawn (the snapshot is left to expire, so its last counts are still scraped)."""

    name = where = "heartbeat"

    def __init__(self, metrics: Metrics, redis: Redis, interval: float, pushing: Callable[[], bool]) -> None:
        super().__init__(metrics)
        self.redis, self.interval, self.pushing = redis, interval, pushing

    async def tick(self) -> None:
        await self.beat()

    async def beat(self) -> None:
        metrics = self.metrics
        ttl_ms = int(self.interval * HEARTBEAT_LIVES * 1000)
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.process_metrics(metrics.process_id), metrics.snapshot(), px=ttl_ms)
            pipe.zadd(keys.process_metrics_index(), {metrics.process_id: now + ttl_ms})
            pipe.zremrangebyscore(keys.process_metrics_index(), "-inf", now)
            pipe.zremrangebyscore(keys.worker_heartbeats(), "-inf", now)
            if self.pushing():
                pipe.set(keys.worker_heartbeat(metrics.process_id), str(now), px=ttl_ms)
                pipe.zadd(keys.worker_heartbeats(), {metrics.process_id: now + ttl_ms})
            await pipe.execute()

    async def last(self) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(keys.worker_heartbeat(self.metrics.process_id))
                pipe.zrem(keys.worker_heartbeats(), self.metrics.process_id)
                await pipe.execute()
        except Exception:
            self.metrics.count_redis_error(self.where)
            log.warning("withdrawing the worker heartbeat failed; it expires by itself")
