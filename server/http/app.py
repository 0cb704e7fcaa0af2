"""The aiohttp application: ``create_app(settings)`` wires settings, Redis, the store and the routes.

Connections are opened and closed in ``cleanup_ctx``; handlers reach shared objects through the
``web.AppKey``s in :mod:`server.http.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from server.articles.store import ArticleStore
from server.core import keys
from server.core.embedded_redis import start_embedded_redis
from server.core.redis_connection import connect, durability_warnings
from server.core.settings import Settings
from server.core.values import utc_now
from server.domain.callers import TokenTable
from server.domain.feeds import load_feed_definitions
from server.feeds.builder import FeedBuilder
from server.feeds.cache import FeedCache
from server.http import dashboard
from server.http.api import articles, feeds, health, hub, partners
from server.http.api import ops as ops_api
from server.http.heartbeat import heartbeat_context
from server.http.metrics import metrics_endpoint
from server.http.middleware import add_get, add_route, add_unmatched_route
from server.http.poll import FEED_POLLS, FeedPolls
from server.http.state import (
    ACCESS,
    CACHE_REDIS,
    DESTINATIONS,
    EMBEDDED_REDIS,
    FEED_BUILDER,
    FEED_CACHE,
    FEEDS,
    HUB_TASKS,
    LEDGER,
    METRICS,
    OPS,
    PARTNERS,
    PUSH_QUEUE,
    PUSH_WORKER,
    REDIS,
    SETTINGS,
    STORE,
    TOKENS,
)
from server.observability.logs import ACCESS_LINES
from server.observability.metrics import Metrics, attach, observe
from server.ops.views import OpsContext
from server.partners.access import AccessControl
from server.partners.ledger import PollLedger, drop_old_manifests, drop_old_receipts
from server.partners.ratelimit import RateLimiter
from server.partners.store import PartnerStore
from server.push.destinations import DestinationStore
from server.push.queue import PushQueue
from server.push.worker import PushWorker, ensure_dispatch_group
from server.runtime.notifications import Subscriber

log = logging.getLogger(__name__)
EMBARGO_POLL_SECONDS = 0.2


def create_app(settings: Settings) -> web.Application:
    # aiohttp's own limit answers 413 before a handler reads more than this.
    # No aiohttp middleware: every route's handler is wrapped instead (see server.http.middleware).
    metrics = Metrics()
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[TOKENS] = TokenTable(settings)
    app[FEEDS] = load_feed_definitions(settings.feeds_dir)
    app.cleanup_ctx.append(_redis_context)
    app.cleanup_ctx.append(_maintenance_context)
    app.cleanup_ctx.append(_embargo_context)
    app[METRICS] = metrics
    app.cleanup_ctx.append(heartbeat_context)  # after Redis: worker heartbeat and metrics snapshot
    _add_routes(app)
    dashboard.setup(app)  # /ops: templates and routes
    app.on_startup.append(_add_unmatched_route)  # last: after every route, tests' own included
    return app


async def _add_unmatched_route(app: web.Application) -> None:
    add_unmatched_route(app)


def _add_routes(app: web.Application) -> None:
    # The partner-facing routes come first: the router tries routes in order, and these are the hot path.
    add_get(app, feeds.FEED_ROUTE, feeds.get_feed)
    add_get(app, "/items/{id}", feeds.get_item)
    add_get(app, "/items/{id}/newsml", feeds.get_item_newsml)
    add_get(app, "/healthz", health.healthz)
    add_get(app, "/readyz", health.readyz)
    add_get(app, "/metrics", metrics_endpoint)
    add_route(app, "POST", "/api/articles", articles.create_article)
    add_get(app, "/api/articles", articles.list_articles)
    add_get(app, "/api/articles/{id}", articles.get_article)
    add_route(app, "PUT", "/api/articles/{id}", articles.put_article)
    add_route(app, "DELETE", "/api/articles/{id}", articles.kill_article)
    add_get(app, "/api/articles/{id}/versions", articles.list_versions)
    add_get(app, "/api/articles/{id}/versions/{version}", articles.get_version)
    add_route(app, "POST", "/api/partners", partners.create_partner)
    add_get(app, "/api/partners", partners.list_partners)
    add_get(app, "/api/partners/{name}", partners.get_partner)
    add_route(app, "PATCH", "/api/partners/{name}", partners.update_partner)
    add_route(app, "POST", "/api/partners/{name}/keys", partners.issue_key)
    add_route(app, "DELETE", "/api/partners/{name}/keys/{key_id}", partners.revoke_key)
    add_get(app, "/api/partners/{name}/status", partners.get_partner_status)
    add_route(app, "POST", "/api/partners/{name}/endpoints", hub.add_endpoint)
    add_get(app, "/api/partners/{name}/endpoints", hub.list_endpoints)
    add_route(app, "DELETE", "/api/partners/{name}/endpoints/{endpoint_id}", hub.remove_endpoint)
    add_route(app, "POST", "/hub", hub.hub)
    add_get(app, "/api/status", ops_api.get_status)
    add_get(app, "/api/propagation", ops_api.get_propagation)
    add_get(app, "/api/deliveries", ops_api.get_deliveries)
    add_route(app, "POST", "/api/deliveries/{delivery_id}/retry", ops_api.retry_delivery)


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
        partner_store = PartnerStore(redis, app[FEEDS])
        ledger = PollLedger(redis)
        access = AccessControl(partner_store, app[TOKENS], ledger, RateLimiter(redis), settings.default_rate_limit)
        app[REDIS], app[CACHE_REDIS], app[STORE] = redis, cache_redis, store
        app[FEED_BUILDER], app[FEED_CACHE] = builder, cache
        app[PARTNERS], app[LEDGER], app[ACCESS] = partner_store, ledger, access
        app[FEED_POLLS] = FeedPolls(access, cache, app[FEEDS], settings.feed_max_age_seconds)
        destinations, queue = DestinationStore(redis), PushQueue(redis)
        worker = None
        if settings.run_workers:
            worker = PushWorker(redis, store, destinations, queue, builder, app[FEEDS], ledger,
                                lambda: access.table, settings, consumer=f"server-{os.getpid()}")
        app[DESTINATIONS], app[PUSH_QUEUE], app[PUSH_WORKER], app[HUB_TASKS] = destinations, queue, worker, set()
        app[OPS] = OpsContext(store, partner_store, ledger, destinations, queue, app[FEEDS])
        subscriber = Subscriber(redis)
        subscriber.on(keys.CHANGES_CHANNEL, cache.apply_notice, cache.resync)
        subscriber.on(keys.PARTNERS_CHANNEL, access.apply_notice, access.reload)
        if worker is not None:
            subscriber.on(keys.PUSH_WAKE_CHANNEL, worker.wake, _nothing)
        attach(app[METRICS], store, cache, access, worker)
        await ensure_dispatch_group(redis)
        await access.reload(force=True)
        await subscriber.start()
        if worker is not None:
            await worker.start()
        stop_flushing = asyncio.Event()
        flusher = asyncio.create_task(_flush_loop(access, settings.flush_interval_seconds, stop_flushing))
        yield
        if worker is not None:
            await worker.stop()
        for task in list(app[HUB_TASKS]):
            task.cancel()
        stop_flushing.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(flusher, timeout=10)
        await _flush(access)  # what this process counted and recorded, before it goes
        await subscriber.stop()
        await cache_redis.aclose()
        await redis.aclose()
    finally:
        if embedded is not None:
            embedded.stop()


async def _embargo_context(app: web.Application) -> AsyncIterator[None]:
    """Lift embargoes when they pass: every process looks a few times a second; the store's lift is a
    WATCHed transaction, so each embargo is lifted exactly once whichever process sees it first."""
    stop = asyncio.Event()
    task = asyncio.create_task(_embargo_loop(app[STORE], stop))
    yield
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)


async def _embargo_loop(store: ArticleStore, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            for article_id in await store.due_embargoes(utc_now()):
                await store.release_embargo(article_id)
        except Exception:
            observe(store).count_redis_error("embargo")
            log.exception("lifting embargoes failed; will try again")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=EMBARGO_POLL_SECONDS)


async def _nothing() -> None:
    return None


async def _flush_loop(access: AccessControl, interval: float, stop: asyncio.Event) -> None:
    """Rate-limit counts and ledger lines go to Redis off the request path, every ``interval``."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        await _flush(access)


async def _flush(access: AccessControl) -> None:
    ACCESS_LINES.flush()
    try:
        await access.limiter.flush()
        await access.ledger.flush()
    except Exception:
        observe(access).count_redis_error("flush")
        log.exception("flushing rate limits and the poll ledger failed; will try again")


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
                await drop_old_manifests(store.redis)
                await drop_old_receipts(store.redis, list(await store.redis.smembers(keys.partner_names())))
                if dropped or trimmed:
                    log.info("retention: dropped %d old revision bodies, trimmed %d change-log entries",
                             dropped, trimmed)
                if await store.redis.get(lock) == token:
                    await store.redis.delete(lock)
        except Exception:
            app[METRICS].count_redis_error("maintenance")
            log.exception("retention job failed; will try again")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.maintenance_interval_seconds)
