"""The composition root: every service of a process (Redis clients, store, caches, partners, ledger,
access control, push, ops) built in one place, and the background jobs started and stopped with them.

``syndicate serve`` (through :func:`server.http.app.create_app`), ``syndicate worker`` (no web app)
and every CLI command open the services for their :class:`Role`:

- ``SERVER``: the request path, the background jobs, and push unless ``SYNDICATE_WORKERS=OFF``;
- ``WORKER``: the background jobs and push, and nothing of HTTP;
- ``COMMAND``: the stores only, on one small Redis pool, with no job running.

Each role of Redis use has a client of its own with a sized pool (see :class:`RedisClients`), so a
burst of push deliveries cannot make a publish or the request path's flush wait for a connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from redis.asyncio import ConnectionPool, Redis

from server.articles.store import ArticleStore
from server.articles.superdesk import SuperdeskIngest
from server.core import keys
from server.core.embedded_redis import EmbeddedRedis, start_embedded_redis
from server.core.redis_address import DirectRedis, RedisAddress
from server.core.redis_connection import connect, durability_warnings
from server.core.replication import ReplicaAcks
from server.core.sealing import Sealer, sealing_key
from server.core.settings import Settings
from server.domain.callers import TokenTable
from server.domain.feeds import FeedDefinition, load_feed_definitions
from server.domain.superdesk import SuperdeskSecrets
from server.feeds.builder import FeedBuilder
from server.feeds.cache import FeedCache
from server.observability.metrics import Metrics, new_process_id, release_process_id
from server.ops.views import OpsContext
from server.partners.access import AccessControl
from server.partners.cursor_acks import CursorAcks
from server.partners.ledger import PollLedger
from server.partners.propagation import Requirements
from server.partners.ratelimit import RateLimiter, SharedCounts
from server.partners.store import PartnerStore
from server.partners.throttle import FailedKeyThrottle, ThrottleLimits
from server.push.destinations import DestinationStore
from server.push.dispatcher import ensure_dispatch_group
from server.push.queue import PushQueue
from server.push.worker import PushWorker, settle_seconds
from server.runtime.background import (
    EmbargoJob,
    EmbeddedRedisJob,
    EpochWatch,
    FlushJob,
    ReplicationWatch,
    RetentionJob,
)
from server.runtime.heartbeat import Heartbeat
from server.runtime.jobs import JobGroup
from server.runtime.notifications import Subscriber

log = logging.getLogger(__name__)

FLUSH_POOL = 4  # the flush job's pipelines, one at a time, and a spare
PUBSUB_POOL = 4  # the subscription, and the resyncs it triggers
PUSH_POOL_HEADROOM = 8  # the dispatcher, the claims and the sweep, beside the deliveries
COMMAND_POOL = 8
POOL_WAIT_SECONDS = 5.0
PUSH_SOCKET_TIMEOUT_SECONDS = 10.0  # above the dispatcher's blocking read (0.5 s)


class Role(StrEnum):
    SERVER = "server"
    WORKER = "worker"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class RedisClients:
    """One client per role of Redis use, each with its own pool.

    ``store``: ingest, the article and partner reads of the request path, the API. ``flush``: the rate
    limit counts and ledger lines the request path buffers. ``pubsub``: this process's subscription.
    ``push``: the dispatcher and the deliveries, sized above the deliveries a worker makes at once
    (``SYNDICATE_PUSH_MAX_IN_FLIGHT``), with a pool wait shorter than a delivery's lease. ``cache``:
    rendered feeds, as bytes, on the cache Redis when there is one.

    Each is on ``REDIS_URL``'s address: with Sentinel, each pool finds the primary by itself and
    follows a failover (``server.core.redis_connection``).
    """

    store: Redis
    flush: Redis
    pubsub: Redis
    push: Redis
    cache: Redis

    @classmethod
    async def open(cls, url: RedisAddress, settings: Settings, role: Role) -> RedisClients:
        cache_url = settings.cache_redis_address or url
        if role is Role.COMMAND:
            store = await connect(url, max_connections=COMMAND_POOL, pool_wait_seconds=POOL_WAIT_SECONDS)
            cache = await connect(cache_url, decode_responses=False, max_connections=COMMAND_POOL)
            return cls(store, store, store, store, cache)
        opened: list[Redis] = []
        # The request path (store, cache) waits at most SYNDICATE_REDIS_TIMEOUT_MS for a connection and
        # for an answer: past that, a 503 with Retry-After. The background roles may wait longer.
        quick = settings.redis_timeout_seconds
        roles = ((settings.redis_pool_size, quick, quick), (FLUSH_POOL, POOL_WAIT_SECONDS, POOL_WAIT_SECONDS),
                 (PUBSUB_POOL, POOL_WAIT_SECONDS, 5.0),
                 (settings.push_max_in_flight + PUSH_POOL_HEADROOM,
                  min(POOL_WAIT_SECONDS, settings.push_lease_seconds / 2), PUSH_SOCKET_TIMEOUT_SECONDS))
        try:
            for size, wait, answer_within in roles:
                opened.append(await connect(url, max_connections=size, pool_wait_seconds=wait,
                                            socket_timeout=answer_within))
            opened.append(await connect(cache_url, decode_responses=False, max_connections=settings.redis_pool_size,
                                        pool_wait_seconds=quick, socket_timeout=quick))
        except BaseException:
            for client in opened:
                await client.aclose()
            raise
        return cls(*opened)

    def pools(self) -> list[ConnectionPool]:
        return list({id(c.connection_pool): c.connection_pool for c in
                     (self.store, self.flush, self.pubsub, self.push, self.cache)}.values())

    async def close(self) -> None:
        for client in {id(c): c for c in (self.store, self.flush, self.pubsub, self.push, self.cache)}.values():
            with contextlib.suppress(Exception):
                await client.aclose()


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    role: Role
    metrics: Metrics
    feeds: dict[str, FeedDefinition]
    tokens: TokenTable
    embedded: EmbeddedRedis | None
    redis: RedisClients
    acks: ReplicaAcks  # how many replicas a durable write waits for, for every store of the process
    store: ArticleStore
    superdesk: SuperdeskIngest
    superdesk_secrets: SuperdeskSecrets
    builder: FeedBuilder
    cache: FeedCache
    partners: PartnerStore
    ledger: PollLedger
    limiter: RateLimiter
    counts: SharedCounts  # the per-address, per-key and per-topic limits (the throttle, the hub)
    access: AccessControl
    destinations: DestinationStore
    queue: PushQueue
    ops: OpsContext
    worker: PushWorker | None
    jobs: JobGroup  # the process's own: flush, embargo, retention, heartbeat
    push_jobs: JobGroup  # the push worker's loops, stopped (and drained) before the last flush
    heartbeat: Heartbeat


def _build(settings: Settings, role: Role, metrics: Metrics, embedded: EmbeddedRedis | None,
           clients: RedisClients) -> Services:
    feeds = load_feed_definitions(settings.feeds_dir)
    tokens = TokenTable(settings)
    superdesk_secrets = SuperdeskSecrets(settings)  # a secret for an unknown publisher stops the start
    acks = ReplicaAcks(clients.store, settings.min_replicas_acked, settings.replica_ack_timeout_seconds,
                       clients.pools())
    store = ArticleStore(clients.store, feeds, acks=acks)
    builder = FeedBuilder(store, settings)
    cache = FeedCache(clients.store, clients.cache, builder, feeds, settings.feed_cache_ttl_seconds,
                      settings.memory_cache_bytes, metrics)
    store.on_change = cache.apply_notice  # read-your-writes on the process that took the write
    superdesk = SuperdeskIngest(store, clients.store, acks)
    partners = PartnerStore(clients.store, feeds, acks)
    ledger = PollLedger(clients.flush, CursorAcks(clients.flush, store, feeds))
    limiter, counts = RateLimiter(clients.flush), SharedCounts(clients.flush)
    throttle = FailedKeyThrottle(counts, ThrottleLimits(settings.failed_keys_per_address, settings.failed_keys_per_key,
                                                        settings.failed_tokens_per_address))
    access = AccessControl(partners, tokens, ledger, limiter, settings.default_rate_limit, throttle)
    key = sealing_key(settings.topic_secret, settings.session_secret, settings.admin_token)
    sealer = Sealer(key) if key else None  # keyed WebSub topics, stored sealed
    destinations, queue = DestinationStore(clients.store, acks, sealer), PushQueue(clients.store)
    worker = None
    if role is Role.WORKER or (role is Role.SERVER and settings.run_workers):
        push_store = ArticleStore(clients.push, feeds, acks=acks)
        worker = PushWorker(clients.push, push_store, DestinationStore(clients.push, acks, sealer),
                            PushQueue(clients.push),
                            FeedBuilder(push_store, settings), feeds, ledger, lambda: access.table, settings,
                            consumer=f"{role}-{os.getpid()}", metrics=metrics)
    ops = OpsContext(store, partners, ledger, destinations, queue, feeds, Requirements(clients.store),
                     timedelta(seconds=settle_seconds(settings)))
    jobs, push_jobs = JobGroup(metrics), JobGroup(metrics)
    heartbeat = Heartbeat(metrics, clients.store, settings.heartbeat_seconds,
                          pushing=lambda: worker is not None and push_jobs.all_alive())
    return Services(settings, role, metrics, feeds, tokens, embedded, clients, acks, store, superdesk,
                    superdesk_secrets, builder, cache, partners,
                    ledger, limiter, counts, access, destinations, queue, ops, worker, jobs, push_jobs, heartbeat)


@contextlib.asynccontextmanager
async def open_services(settings: Settings, role: Role, metrics: Metrics | None = None) -> AsyncIterator[Services]:
    """The services of one process for ``role``, started; on exit stopped in order (push, the jobs with
    a last flush, the subscription), then Redis closed and the embedded Redis, if any, stopped."""
    metrics = metrics or Metrics()
    embedded = None
    url = settings.redis_address
    if url is None:
        embedded = start_embedded_redis(settings.data_dir, settings.redis_server_bin,
                                        maxmemory_bytes=settings.redis_maxmemory_mb * 1024 * 1024 or None)
        url = DirectRedis(embedded.url)
    try:
        clients = await RedisClients.open(url, settings, role)
        try:
            services = _build(settings, role, metrics, embedded, clients)
            await ensure_dispatch_group(clients.store)
            await services.acks.refresh()
            if role is Role.COMMAND:
                yield services
                return
            if embedded is None:
                for warning in await durability_warnings(clients.store):
                    log.warning("%s (see docs/operations.md, 'Using your own Redis')", warning)
            async with _running(services, clients):
                yield services
        finally:
            await clients.close()
    finally:
        if embedded is not None:
            embedded.stop()


@contextlib.asynccontextmanager
async def _running(services: Services, clients: RedisClients) -> AsyncIterator[None]:
    access, cache, worker, jobs = services.access, services.cache, services.worker, services.jobs
    subscriber = Subscriber(clients.pubsub, services.metrics)
    subscriber.on(keys.CHANGES_CHANNEL, cache.apply_notice, cache.resync)
    subscriber.on(keys.PARTNERS_CHANNEL, access.apply_notice, access.reload)
    if worker is not None:
        subscriber.on(keys.PUSH_WAKE_CHANNEL, worker.wake, _nothing)
    services.metrics.process_id = new_process_id()

    async def forget_the_old_store(epoch: str) -> None:
        cache.forget(epoch)
        await cache.resync()
        services.partners.forget()
        await access.reload(force=True)
        await ensure_dispatch_group(clients.store, from_start=True)  # changes since the wipe are fanned out

    retention = RetentionJob(services.metrics, services.store, services.settings, services.ops.requirements,
                             services.ledger)

    async def reconcile_the_new_store(_epoch: str) -> None:
        retention.wake()  # an older copy's indexes are made whole by the maintenance, now not in an hour

    epoch_watch = EpochWatch(services.metrics, services.store, [forget_the_old_store, reconcile_the_new_store],
                             heard=lambda: cache.newest_change)
    try:
        cache.epoch = await epoch_watch.start()
        await access.reload(force=True)
        await subscriber.start()
        try:
            jobs.start(FlushJob(services.metrics, services.limiter, services.counts, services.ledger,
                                services.settings.flush_interval_seconds))
            jobs.start(EmbargoJob(services.metrics, services.store))
            jobs.start(retention)
            jobs.start(epoch_watch)
            jobs.start(ReplicationWatch(services.metrics, services.acks))
            if services.embedded is not None and services.embedded.owner:
                jobs.start(EmbeddedRedisJob(services.metrics, services.embedded, services.settings.redis_server_bin))
            if worker is not None:
                await worker.start()
                for job in worker.jobs:
                    services.push_jobs.start(job)
            await services.heartbeat.beat()  # before the process takes requests: /readyz sees its worker
            jobs.start(services.heartbeat)
            yield
        finally:  # also when the start-up above failed half-way: every job started is stopped
            await services.push_jobs.stop()
            if worker is not None:
                await worker.close()  # deliveries in flight finish, and their receipts are buffered
            await jobs.stop()  # the heartbeat withdraws itself; the flush flushes one last time
            await subscriber.stop()
    finally:
        release_process_id(services.metrics.process_id)


async def _nothing() -> None:
    return None
