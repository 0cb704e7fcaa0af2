"""The aiohttp application: ``create_app(settings)`` opens the process's services (the composition
root, :mod:`server.runtime.services`) in ``cleanup_ctx`` and adds the routes.

Handlers reach shared objects through the ``web.AppKey``s in :mod:`server.http.state`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from server.core.settings import Settings
from server.domain import ninjs
from server.http import dashboard
from server.http.api import articles, feeds, health, hub, me, partners, superdesk
from server.http.api import ops as ops_api
from server.http.api.hub import HUB_LIMITS, HubLimits
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
    SERVICES,
    SETTINGS,
    STORE,
    SUPERDESK,
    SUPERDESK_SECRETS,
    TOKENS,
)
from server.observability.metrics import Metrics
from server.runtime.services import Role, Services, open_services

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    # aiohttp's own limit answers 413 before a handler reads more than this.
    # No aiohttp middleware: every route's handler is wrapped instead (see server.http.middleware).
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.on_startup.append(_load_document_checks)
    app.cleanup_ctx.append(_services_context)
    _add_routes(app)
    dashboard.setup(app)  # /ops: templates and routes
    app.on_startup.append(_add_unmatched_route)  # last: after every route, tests' own included
    return app


async def _load_document_checks(_app: web.Application) -> None:
    ninjs.load_validators()  # jsonschema is imported lazily (the CLI's start-up); a server pays it here


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
    add_route(app, "POST", "/api/superdesk/items", superdesk.push_item)
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
    add_route(app, "POST", "/api/destinations/{destination_id}/retry", ops_api.retry_destination)
    add_get(app, "/api/me/status", me.get_my_status)


async def _services_context(app: web.Application) -> AsyncIterator[None]:
    async with open_services(app[SETTINGS], Role.SERVER, app[METRICS]) as services:
        _expose(app, services)
        try:
            yield
        finally:
            for task in list(app[HUB_TASKS]):
                task.cancel()


def _expose(app: web.Application, services: Services) -> None:
    """What the handlers reach, one AppKey each."""
    app[SERVICES] = services
    app[TOKENS], app[FEEDS], app[EMBEDDED_REDIS] = services.tokens, services.feeds, services.embedded
    app[REDIS], app[CACHE_REDIS], app[STORE] = services.redis.store, services.redis.cache, services.store
    app[SUPERDESK], app[SUPERDESK_SECRETS] = services.superdesk, services.superdesk_secrets
    app[FEED_BUILDER], app[FEED_CACHE] = services.builder, services.cache
    app[PARTNERS], app[LEDGER], app[ACCESS] = services.partners, services.ledger, services.access
    app[DESTINATIONS], app[PUSH_QUEUE], app[PUSH_WORKER] = services.destinations, services.queue, services.worker
    app[HUB_TASKS] = set[asyncio.Task[bool]]()
    settings = services.settings
    app[HUB_LIMITS] = HubLimits(services.counts, settings.hub_requests_per_address, settings.hub_requests_per_topic,
                                settings.hub_max_verifications)
    app[OPS] = services.ops
    app[FEED_POLLS] = FeedPolls(services.access, services.cache, services.feeds,
                                services.settings.feed_max_age_seconds)
