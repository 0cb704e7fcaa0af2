"""``PushWorker``: one process's push, wired together and started and stopped as one.

It owns the HTTP client session and two loops: the :class:`~server.push.dispatcher.Dispatcher` (change
log → queue, with the :class:`~server.push.websub.LeaseKeeper`'s sweep every few seconds) and the
:class:`~server.push.deliverer.Deliverer` (queue → POSTs). Workers run inside every server process by
default, and as ``syndicate worker`` processes for scale-out; they share the work through Redis.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import aiohttp
from redis.asyncio import Redis

from server.articles.store import ArticleStore
from server.core.settings import Settings
from server.domain.feeds import FeedDefinition
from server.domain.partners import KeyTable
from server.feeds.builder import FeedBuilder
from server.observability.metrics import Metrics
from server.partners.ledger import PollLedger
from server.partners.propagation import Requirements
from server.push.deliverer import Deliverer
from server.push.destinations import DestinationStore
from server.push.dispatcher import Dispatcher, ensure_dispatch_group
from server.push.payloads import Payloads
from server.push.queue import PushQueue
from server.push.safety import SafeResolver
from server.push.websub import LeaseKeeper

MAX_SETTLE_SECONDS = 1.0


def settle_seconds(settings: Settings) -> float:
    """How old a change must be before it is judged: two flush intervals (every process writes the
    receipts it buffered within one) and a little more; never more than a second (the setting allows at
    most 100 ms; a process built with a longer interval must not hold push back for as long)."""
    return min(2 * settings.flush_interval_seconds + 0.05, MAX_SETTLE_SECONDS)


class PushWorker:
    def __init__(self, redis: Redis, store: ArticleStore, destinations: DestinationStore, queue: PushQueue,
                 builder: FeedBuilder, feeds: dict[str, FeedDefinition], ledger: PollLedger,
                 key_table: Callable[[], KeyTable], settings: Settings, consumer: str, metrics: Metrics) -> None:
        self.redis = redis
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self.keeper = LeaseKeeper(destinations, feeds, key_table, self.session, settings.push_allow_networks)
        self.dispatcher = Dispatcher(redis, store, destinations, queue, feeds, key_table, self.keeper, consumer,
                                     metrics, Requirements(redis), settle_seconds(settings))
        self.deliverer = Deliverer(redis, store, destinations, queue,
                                   Payloads(builder, feeds, f"{settings.base_url}/hub", key_table), ledger, key_table,
                                   settings, self.session, metrics)

    def session(self) -> aiohttp.ClientSession:
        """The client session every push, and every denial, goes through (made by :meth:`start`)."""
        if self._session is None:
            raise RuntimeError("the push worker has not been started")
        return self._session

    async def start(self) -> None:
        """Open the client session; the loops themselves (:attr:`jobs`) run in the process's job group."""
        await ensure_dispatch_group(self.redis)
        # Concurrency is limited per destination by the deliverer (not per host: many callbacks of one
        # aggregator share a host). The resolver refuses forbidden addresses at connect time, so a name
        # re-pointed after the registration check still cannot reach an internal address.
        connector = aiohttp.TCPConnector(limit=self.settings.push_max_in_flight, limit_per_host=0,
                                         family=socket.AF_UNSPEC, keepalive_timeout=30,
                                         resolver=SafeResolver(self.settings.push_allow_networks))
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.settings.push_timeout_seconds),
            auto_decompress=False)

    @property
    def jobs(self) -> tuple[Dispatcher, Deliverer]:
        """The two loops, for a :class:`~server.runtime.jobs.JobGroup` to run and restart."""
        return self.dispatcher, self.deliverer

    async def close(self) -> None:
        """After the loops have stopped: let the deliveries in flight finish, then close the session."""
        self.deliverer.wake()
        await self.deliverer.drain(timeout=10)
        if self._session is not None:
            await self._session.close()

    def wake(self, _message: str = "") -> None:
        """Deliveries are due (``syn:push:wake``): the deliverer need not wait for its next poll."""
        self.deliverer.wake()
