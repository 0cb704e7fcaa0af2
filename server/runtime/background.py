"""The periodic jobs of a server process: flushing what the request path counted, lifting embargoes,
and retention. Each is a :class:`~server.runtime.jobs.PeriodicJob` run by the process's job group."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta

from server.articles.store import ArticleStore
from server.core import keys
from server.core.embedded_redis import EmbeddedRedis
from server.core.replication import ReplicaAcks
from server.core.settings import Settings
from server.core.values import utc_now
from server.observability.logs import ACCESS_LINES
from server.observability.metrics import Metrics
from server.partners.ledger import STATUS_WINDOW, PollLedger, drop_old_manifests, drop_old_receipts
from server.partners.propagation import Requirements
from server.partners.ratelimit import RateLimiter, SharedCounts
from server.runtime.jobs import PeriodicJob

log = logging.getLogger(__name__)

EMBARGO_POLL_SECONDS = 0.2
MAINTENANCE_LOCK_SECONDS = 300


class FlushJob(PeriodicJob):
    """Rate-limit counts, the other limits' counts (failed keys, the hub), ledger lines and access lines
    go to Redis (and the log) off the request path, every ``flush_interval_seconds``, and once more on
    the way out."""

    name = where = "flush"

    def __init__(self, metrics: Metrics, limiter: RateLimiter, counts: SharedCounts, ledger: PollLedger,
                 interval: float) -> None:
        super().__init__(metrics)
        self.limiter, self.counts, self.ledger, self.interval = limiter, counts, ledger, interval

    async def tick(self) -> None:
        ACCESS_LINES.flush()
        await self.limiter.flush()
        await self.counts.flush()
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

    def __init__(self, metrics: Metrics, store: ArticleStore, settings: Settings, requirements: Requirements,
                 ledger: PollLedger) -> None:
        super().__init__(metrics)
        self.store, self.settings, self.requirements, self.ledger = store, settings, requirements, ledger
        self.interval = settings.maintenance_interval_seconds

    async def _reconcile(self, names: list[str]) -> None:
        """First, and whatever fails in it: the indexes the ops views read, made whole again (after an
        upgrade, beside a process of an older version, or on a Redis restored from an older copy)."""
        try:
            _copied, dropped = await self.requirements.reconcile_partner_index(names)
            if dropped:
                log.warning("propagation: %d stale pending items dropped from the partners' index", dropped)
            await self.ledger.reconcile_last_seen(names)
        except Exception:
            self.metrics.count_redis_error(self.where)
            log.exception("reconciling the ops views' indexes failed; the rest of the maintenance goes on")

    async def tick(self) -> None:
        redis, lock, token = self.store.redis, keys.maintenance_lock(), secrets.token_hex(8)
        if not await redis.set(lock, token, nx=True, ex=MAINTENANCE_LOCK_SECONDS):
            return
        names = [str(name) for name in await redis.smembers(keys.partner_names())]
        await self._reconcile(names)
        dropped = await self.store.drop_old_bodies(timedelta(days=self.settings.retention_days))
        trimmed = await self.store.trim_changelog(timedelta(days=self.settings.changelog_retention_days))
        await drop_old_manifests(redis)
        await drop_old_receipts(redis, names)
        await self.requirements.trim(names, STATUS_WINDOW, utc_now())
        if dropped or trimmed:
            log.info("retention: dropped %d old revision bodies, trimmed %d change-log entries", dropped, trimmed)
        if await redis.get(lock) == token:
            await redis.delete(lock)


class EmbeddedRedisJob(PeriodicJob):
    """Supervise the embedded ``redis-server`` this process started: if it dies, start it again on
    the same port and data (the AOF keeps every acknowledged write). While it is down, or if it cannot
    be restarted, ``/healthz`` fails."""

    name = where = "embedded-redis"
    interval = 0.5

    def __init__(self, metrics: Metrics, embedded: EmbeddedRedis, binary: str) -> None:
        super().__init__(metrics)
        self.embedded, self.binary = embedded, binary

    async def tick(self) -> None:
        if self.embedded.running:
            return
        log.error("the embedded redis-server died (exit %s); restarting it",
                  self.embedded.process.returncode if self.embedded.process else "?")
        self.metrics.job_restarted(self.name)
        self.embedded.restart(self.binary)  # blocking, briefly: the child must be forked by this thread


class EpochWatch(PeriodicJob):
    """Notice that the store Redis came back empty or from an older copy (its epoch is gone or another,
    or its change-log sequence is behind a change this process has seen: read at a tick, or announced
    by a commit's notice, ``heard``), and make this process forget what it knew: rendered pages and
    generations, the key table (partners that no longer exist), the consumer groups."""

    name = where = "epoch"
    interval = 1.0

    def __init__(self, metrics: Metrics, store: ArticleStore, on_new_store: list[Callable[[str], Awaitable[None]]],
                 heard: Callable[[], int] = lambda: 0) -> None:
        super().__init__(metrics)
        self.store, self.on_new_store, self.heard = store, on_new_store, heard
        self.epoch: str | None = None
        self.highest_seq = 0

    async def start(self) -> str:
        """The epoch at start-up (made if there is none yet)."""
        self.epoch = await self._current()
        self.highest_seq = await self.store.last_change_seq()
        return self.epoch

    async def tick(self) -> None:
        redis = self.store.redis
        # A change announced since the last tick counts: a copy taken just before it is older too.
        seen = max(self.highest_seq, self.heard())
        epoch, seq = await redis.get(keys.store_epoch()), await self.store.last_change_seq()
        if epoch is not None and epoch == self.epoch and seq >= seen:
            self.highest_seq = seq
            return
        if epoch == self.epoch:  # same store, but its change log went backwards: an older copy
            await redis.delete(keys.store_epoch())
        new = await self._current()
        log.error("the store Redis is not the one this process knew (epoch %s -> %s, change %d -> %d): "
                  "dropping cached pages, generations and the key table", self.epoch, new, seen, seq)
        self.metrics.job_restarted(self.name)
        self.epoch, self.highest_seq = new, await self.store.last_change_seq()
        for callback in self.on_new_store:
            await callback(new)

    async def _current(self) -> str:
        redis = self.store.redis
        await redis.set(keys.store_epoch(), secrets.token_hex(8), nx=True)
        return str(await redis.get(keys.store_epoch()))


class ReplicationWatch(PeriodicJob):
    """Every second: with Sentinel, make each pool follow a primary that moved (``follow_primary``),
    then re-read how many replicas a durable write waits for (``server.core.replication``)."""

    name = where = "replication"
    interval = 1.0

    def __init__(self, metrics: Metrics, acks: ReplicaAcks) -> None:
        super().__init__(metrics)
        self.acks = acks

    async def tick(self) -> None:
        await self.acks.refresh()
