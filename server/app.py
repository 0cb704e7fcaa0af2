"""The aiohttp application: ``create_app(settings)`` wires settings, Redis, the store and the routes.

Connections are opened and closed in ``cleanup_ctx``; handlers reach shared objects through the
``web.AppKey``s in :mod:`server.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from server.api import articles, health
from server.auth import TokenTable
from server.embedded_redis import start_embedded_redis
from server.problems import problem_middleware
from server.redis_setup import connect, durability_warnings
from server.settings import Settings
from server.state import EMBEDDED_REDIS, REDIS, SETTINGS, STORE, TOKENS
from server.store import ArticleStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    # aiohttp's own limit answers 413 before a handler reads more than this.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app[TOKENS] = TokenTable(settings)
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
        app[REDIS] = redis
        app[STORE] = ArticleStore(redis)
        yield
        await redis.aclose()
    finally:
        if embedded is not None:
            embedded.stop()


async def _maintenance_context(app: web.Application) -> AsyncIterator[None]:
    """Retention in the background: drop old revision bodies and trim the change log, one process at
    a time (a short Redis lock), at start-up and then every ``maintenance_interval_seconds``."""
    task = asyncio.create_task(_maintenance_loop(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _maintenance_loop(app: web.Application) -> None:
    from server import keys

    settings = app[SETTINGS]
    store = app[STORE]
    while True:
        try:
            if await store.redis.set(keys.maintenance_lock(), "1", nx=True, ex=300):
                dropped = await store.drop_old_bodies(timedelta(days=settings.retention_days))
                trimmed = await store.trim_changelog(timedelta(days=settings.changelog_retention_days))
                if dropped or trimmed:
                    log.info("retention: dropped %d old revision bodies, trimmed %d change-log entries",
                             dropped, trimmed)
                await store.redis.delete(keys.maintenance_lock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention job failed; will try again")
        await asyncio.sleep(settings.maintenance_interval_seconds)
