"""The aiohttp application: ``create_app(settings)`` wires settings, Redis, the store and the routes.

Connections are opened and closed in ``cleanup_ctx``; handlers reach shared objects through the
``web.AppKey``s in :mod:`server.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from server import keys
from server.api import articles, feeds, health
from server.auth import TokenTable
from server.embedded_redis import start_embedded_redis
from server.feed_builder import FeedBuilder
from server.feed_cache import FeedCache
from server.feeds import load_feed_definitions
from server.problems import problem_middleware
from server.redis_setup import connect, durability_warnings
from server.settings import Settings
from server.state import (
    CACHE_REDIS,
    EMBEDDED_REDIS,
    FEED_BUILDER,
    FEED_CACHE,
    FEEDS,
    REDIS,
    SETTINGS,
    STORE,
    TOKENS,
)
from server.store import ArticleStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    # aiohttp's own limit answers 413 before a handler reads more than this.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app[TOKENS] = TokenTable(settings)
    app[FEEDS] = load_feed_definitions(settings.feeds_dir)
    app.cleanup_ctx.append(_redis_context)
    app.cleanup_ctx.append(_maintenance_context)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_post("/api/articles", articles.create_article)
    app.router.add_get("/api/articles", articles.list_articles)
    app.router.add_get("/api/articles/{id}", articles.get_article)
    app.router.add_put("/api/articles/{id}", articles.put_article)
    app.router.add_delete("/api/articles/{id}", articles.kill_article)
    app.router.add_get("/api/articles/{id}/versions", articles.list_versions)
    app.router.add_get("/api/articles/{id}/versions/{version}", articles.get_version)
    app.router.add_get("/feeds/{name}/{format}", feeds.get_feed)
    app.router.add_get("/items/{id}", feeds.get_item)
    app.router.add_get("/items/{id}/newsml", feeds.get_item_newsml)


async def _redis_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded = None
    if settings.redis_url is None:
        embedded = start_embedded_redis(settings.data_dir, settings.redis_server_bin)
        url = embedded.url
    else:
        url = settings.redis_url
    app[EMBEDDED_REDIS] = embedded
    try:
        redis = await connect(url)
        if embedded is None:
            for warning in await durability_warnings(redis):
                log.warning("%s (see README, 'Using your own Redis')", warning)
        cache_redis = await connect(settings.cache_redis_url or url, decode_responses=False)
        store = ArticleStore(redis, app[FEEDS])
        builder = FeedBuilder(store, settings)
        cache = FeedCache(redis, cache_redis, builder, app[FEEDS], settings.feed_cache_ttl_seconds,
                          settings.memory_cache_bytes)
        store.on_change = cache.apply_notice  # read-your-writes on the process that took the write
        app[REDIS], app[CACHE_REDIS], app[STORE] = redis, cache_redis, store
        app[FEED_BUILDER], app[FEED_CACHE] = builder, cache
        await cache.start()
        yield
        await cache.stop()
        await cache_redis.aclose()
        await redis.aclose()
    finally:
        if embedded is not None:
            embedded.stop()


async def _maintenance_context(app: web.Application) -> AsyncIterator[None]:
    """Retention in the background: drop old revision bodies and trim the change log, one process at
    a time (a short Redis lock), at start-up and then every ``maintenance_interval_seconds``."""
    stop = asyncio.Event()
    task = asyncio.create_task(_maintenance_loop(app, stop))
    yield
    # An event, not a cancellation: redis-py can swallow a CancelledError in the middle of a command.
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)


async def _maintenance_loop(app: web.Application, stop: asyncio.Event) -> None:
    settings = app[SETTINGS]
    store = app[STORE]
    lock = keys.maintenance_lock()
    while not stop.is_set():
        token = secrets.token_hex(8)
        try:
            if await store.redis.set(lock, token, nx=True, ex=300):
                dropped = await store.drop_old_bodies(timedelta(days=settings.retention_days))
                trimmed = await store.trim_changelog(timedelta(days=settings.changelog_retention_days))
                if dropped or trimmed:
                    log.info("retention: dropped %d old revision bodies, trimmed %d change-log entries",
                             dropped, trimmed)
                if await store.redis.get(lock) == token:
                    await store.redis.delete(lock)
        except Exception:
            log.exception("retention job failed; will try again")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.maintenance_interval_seconds)
