"""The periodic jobs of a server process: flushing what the request path counted, lifting embargoes,
and retention. Each is a :class:`~server.runtime.jobs.PeriodicJob` run by the process's job group."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from server.articles.store import ArticleStore
from server.core import keys
from server.core.settings import Settings
from server.core.values import utc_now
from server.observability.logs import ACCESS_LINES
from server.observability.metrics import Metrics
from server.partners.ledger import STATUS_WINDOW, PollLedger, drop_old_manifests, drop_old_receipts
from server.partners.propagation import Requirements
from server.partners.ratelimit import RateLimiter
from server.runtime.jobs import PeriodicJob

log = logging.getLogger(__name__)

EMBARGO_POLL_SECONDS = 0.2
MAINTENANCE_LOCK_SECONDS = 300


class FlushJob(PeriodicJob):
    """Rate-limit counts, ledger lines and access lines go to Redis (and the log) off the request path,
    every ``flush_interval_seconds``, and once more on the way out."""

    name = where = "flush"

    def __init__(self, metrics: Metrics, limiter: RateLimiter, ledger: PollLedger, interval: float) -> None:
        super().__init__(metrics)
        self.limiter, self.ledger, self.interval = limiter, ledger, interval

    async def tick(self) -> None:
        ACCESS_LINES.flush()
        await self.limiter.flush()
        await self.ledger.flush()

    async def last(self) -> None:
        try:
            await self.tick()
        except Exception:
            self.metrics.count_redis_error(self.where)
            log.exception("the last flush of rate limits and the poll ledger failed")


class EmbargoJob(PeriodicJob):
    """Lift embargoes when they pass: every process looks a few times a second; the store's lift is a
    WATCHed transaction, so each embargo is lifted exactly once whichever process sees it first."""

    name = where = "embargo"
    interval = EMBARGO_POLL_SECONDS
    tick_at_start = True

    def __init__(self, metrics: Metrics, store: ArticleStore) -> None:
        super().__init__(metrics)
        self.store = store

    async def tick(self) -> None:
        for article_id in await self.store.due_embargoes(utc_now()):
            await self.store.release_embargo(article_id)


class RetentionJob(PeriodicJob):
    """Drop old revision bodies, trim the change log and drop old manifests and receipts, one process
    at a time (a short Redis lock), at start-up and then every ``maintenance_interval_seconds``."""

    name = where = "maintenance"
    tick_at_start = True

    def __init__(self, metrics: Metrics, store: ArticleStore, settings: Settings, requirements: Requirements) -> None:
        super().__init__(metrics)
        self.store, self.settings, self.requirements = store, settings, requirements
        self.interval = settings.maintenance_interval_seconds

    async def tick(self) -> None:
        redis, lock, token = self.store.redis, keys.maintenance_lock(), secrets.token_hex(8)
        if not await redis.set(lock, token, nx=True, ex=MAINTENANCE_LOCK_SECONDS):
            return
        dropped = await self.store.drop_old_bodies(timedelta(days=self.settings.retention_days))
        trimmed = await self.store.trim_changelog(timedelta(days=self.settings.changelog_retention_days))
        await drop_old_manifests(redis)
        names = list(await redis.smembers(keys.partner_names()))
        await drop_old_receipts(redis, names)
        await self.requirements.trim(names, STATUS_WINDOW, utc_now())
        if dropped or trimmed:
            log.info("retention: dropped %d old revision bodies, trimmed %d change-log entries", dropped, trimmed)
        if await redis.get(lock) == token:
            await redis.delete(lock)
