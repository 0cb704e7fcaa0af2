"""The application's shared state: one ``web.AppKey`` per object the handlers reach through the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from server.core.settings import Settings
from server.observability.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from server.articles.store import ArticleStore
    from server.articles.superdesk import SuperdeskIngest
    from server.core.embedded_redis import EmbeddedRedis
    from server.domain.callers import TokenTable
    from server.domain.feeds import FeedDefinition
    from server.domain.superdesk import SuperdeskSecrets
    from server.feeds.builder import FeedBuilder
    from server.feeds.cache import FeedCache
    from server.ops.views import OpsContext
    from server.partners.access import AccessControl
    from server.partners.ledger import PollLedger
    from server.partners.store import PartnerStore
    from server.push.destinations import DestinationStore
    from server.push.queue import PushQueue
    from server.push.worker import PushWorker
    from server.runtime.services import Services

SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[Redis] = web.AppKey("redis")
EMBEDDED_REDIS: web.AppKey[EmbeddedRedis | None] = web.AppKey("embedded_redis")
STORE: web.AppKey[ArticleStore] = web.AppKey("store")
TOKENS: web.AppKey[TokenTable] = web.AppKey("tokens")
SUPERDESK: web.AppKey[SuperdeskIngest] = web.AppKey("superdesk")
SUPERDESK_SECRETS: web.AppKey[SuperdeskSecrets] = web.AppKey("superdesk_secrets")
FEEDS: web.AppKey[dict[str, FeedDefinition]] = web.AppKey("feeds")
CACHE_REDIS: web.AppKey[Redis] = web.AppKey("cache_redis")
FEED_BUILDER: web.AppKey[FeedBuilder] = web.AppKey("feed_builder")
FEED_CACHE: web.AppKey[FeedCache] = web.AppKey("feed_cache")
ACCESS: web.AppKey[AccessControl] = web.AppKey("access")
PARTNERS: web.AppKey[PartnerStore] = web.AppKey("partners")
LEDGER: web.AppKey[PollLedger] = web.AppKey("ledger")
DESTINATIONS: web.AppKey[DestinationStore] = web.AppKey("destinations")
PUSH_QUEUE: web.AppKey[PushQueue] = web.AppKey("push_queue")
PUSH_WORKER: web.AppKey[PushWorker | None] = web.AppKey("push_worker")
HUB_TASKS: web.AppKey[set] = web.AppKey("hub_tasks")
OPS: web.AppKey[OpsContext] = web.AppKey("ops")
SERVICES: web.AppKey[Services] = web.AppKey("services")


METRICS = web.AppKey("metrics", Metrics)
