"""This process's heartbeat: its metrics snapshot (and its push worker's heartbeat) published
to Redis every ``heartbeat_seconds``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from server.core import keys
from server.http.state import METRICS
from server.observability.metrics import HEARTBEAT_LIVES, new_process_id, release_process_id

log = logging.getLogger(__name__)


async def beat(app: web.Application) -> None:
    """Publish this process's snapshot, and its worker heartbeat when its push worker runs."""
    from server.http.state import PUSH_WORKER, REDIS, SETTINGS

    metrics, redis, settings = app[METRICS], app[REDIS], app[SETTINGS]
    ttl_ms = int(settings.heartbeat_seconds * HEARTBEAT_LIVES * 1000)
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.process_metrics(metrics.process_id), metrics.snapshot(), px=ttl_ms)
        pipe.zadd(keys.process_metrics_index(), {metrics.process_id: now + ttl_ms})
        pipe.zremrangebyscore(keys.process_metrics_index(), "-inf", now)
        pipe.zremrangebyscore(keys.worker_heartbeats(), "-inf", now)
        if _worker_running(app.get(PUSH_WORKER)):
            pipe.set(keys.worker_heartbeat(metrics.process_id), str(now), px=ttl_ms)
            pipe.zadd(keys.worker_heartbeats(), {metrics.process_id: now + ttl_ms})
        await pipe.execute()


def _worker_running(worker: object | None) -> bool:
    if worker is None:
        return False
    tasks = getattr(worker, "_tasks", None) or []
    return all(not task.done() for task in tasks)


async def heartbeat_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the Redis one): the first beat before the app takes requests, then one every
    ``heartbeat_seconds``; on the way out the worker heartbeat is withdrawn (the snapshot is left to
    expire, so its last counts are still scraped)."""
    from server.http.state import REDIS

    metrics, stop = app[METRICS], asyncio.Event()
    metrics.process_id = new_process_id()
    await beat(app)
    task = asyncio.create_task(_heartbeat_loop(app, stop))
    yield
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)
    try:
        async with app[REDIS].pipeline(transaction=False) as pipe:
            pipe.delete(keys.worker_heartbeat(metrics.process_id))
            pipe.zrem(keys.worker_heartbeats(), metrics.process_id)
            await pipe.execute()
    except Exception:
        metrics.count_redis_error("heartbeat")
        log.warning("withdrawing the worker heartbeat failed; it expires by itself")
    release_process_id(metrics.process_id)


async def _heartbeat_loop(app: web.Application, stop: asyncio.Event) -> None:
    from server.http.state import SETTINGS

    interval = app[SETTINGS].heartbeat_seconds
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            break
        try:
            await beat(app)
        except Exception:
            app[METRICS].count_redis_error("heartbeat")
            log.exception("heartbeat failed; will try again")
