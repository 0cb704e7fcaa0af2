"""WebSub subscriptions over their life: verification of intent, the lease sweep, and denial.

- :func:`verify_intent`: the hub's GET to a callback with ``hub.mode``, ``hub.topic``, a fresh
  single-use ``hub.challenge`` (and the granted ``hub.lease_seconds``); only a 2xx whose body is the
  challenge makes (or replaces) the subscription, with ``expiresAt = now + lease``, or removes it.
  Saving it is retried with backoff for a bounded time (:class:`SaveRetry`) when Redis fails; a
  subscription that still cannot be saved is denied (:func:`deny`), so no subscriber is left
  believing it is subscribed when it is not.
- :class:`LeaseKeeper`: whether a destination is kept. A subscription whose lease ran out is removed;
  one no longer entitled (:func:`server.push.dispatcher.push_refusal`) is removed and told
  ``hub.mode=denied`` (:func:`deny`) with that refusal's reason (disabled, feed or format taken away,
  key revoked); a webhook of a disabled partner is skipped, not removed.
  :meth:`LeaseKeeper.sweep` puts every destination through it.

Redirects are never followed, and only a little of any answer is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import aiohttp
from redis.exceptions import RedisError
from yarl import URL

from server.core.networks import Network
from server.core.values import utc_now
from server.domain.feeds import FeedDefinition
from server.domain.partners import KeyTable
from server.push.destinations import WEBHOOK, Destination, DestinationStore
from server.push.dispatcher import push_refusal
from server.push.safety import SafeResolver, UnsafeDestination, check_destination, check_literal_address

log = logging.getLogger(__name__)

VERIFY_READ = 4096  # of a verification's answer: enough for any challenge
DENY_READ = 64 * 1024


class HubMode(StrEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class SaveRetry:
    """How long, and how often, saving a verified subscription is tried when Redis fails."""

    budget_seconds: float = 10.0  # from the first failure: then the subscription is denied
    first_delay: float = 0.1
    max_delay: float = 2.0

    def delays(self) -> list[float]:
        """The waits between tries: doubling from ``first_delay``, at most ``max_delay`` each, and
        adding up to no more than ``budget_seconds`` (pure)."""
        waits: list[float] = []
        delay, total = self.first_delay, 0.0
        while delay > 0 and total + delay <= self.budget_seconds:
            waits.append(delay)
            total += delay
            delay = min(delay * 2, self.max_delay)
        return waits


async def _with_retry(what: str, write: Callable[[], Awaitable[object]], retry: SaveRetry) -> bool:
    """Run ``write``, again after each of ``retry``'s waits while Redis fails; whether it succeeded."""
    for wait in [*retry.delays(), None]:
        try:
            await write()
            return True
        except (RedisError, OSError, TimeoutError) as exc:
            if wait is None:
                log.error("websub: %s failed, giving up: %s", what, exc)
                return False
            log.warning("websub: %s failed, trying again in %.2f s: %s", what, wait, exc)
            await asyncio.sleep(wait)
    return False


async def verify_intent(destinations: DestinationStore, mode: HubMode, subscription: Destination,
                        lease_seconds: int, *, allow_networks: tuple[Network, ...], timeout_seconds: float,
                        save_retry: SaveRetry = SaveRetry()) -> bool:
    """Verification of intent; on success the subscription is made, replaced or removed. A verified
    subscription that cannot be saved (Redis failing for all of ``save_retry``) is denied: False."""
    challenge = secrets.token_urlsafe(24)
    params = {"hub.mode": str(mode), "hub.topic": subscription.echo_topic, "hub.challenge": challenge}
    if mode is HubMode.SUBSCRIBE:
        params["hub.lease_seconds"] = str(lease_seconds)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    # The resolver refuses internal addresses as the connection is made (no DNS-rebinding gap).
    connector = aiohttp.TCPConnector(resolver=SafeResolver(allow_networks))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            check_literal_address(subscription.url, allow_networks)
            async with session.get(str(URL(subscription.url).update_query(params)),
                                   allow_redirects=False) as response:
                body = await response.content.read(VERIFY_READ)
                verified = 200 <= response.status < 300 and body.strip() == challenge.encode()
        except (TimeoutError, aiohttp.ClientError, OSError, UnsafeDestination) as exc:
            log.info("websub: verifying %s for %s failed: %s", mode, subscription.url, exc)
            return False
        if not verified:
            log.info("websub: %s not verified by %s", mode, subscription.url)
            return False
        if mode is HubMode.UNSUBSCRIBE:
            if not await _with_retry(f"removing {subscription.id}",
                                     lambda: destinations.remove(subscription.id), save_retry):
                return False
        else:
            now = utc_now()
            record = dataclasses.replace(subscription, created_at=now,
                                         expires_at=now + timedelta(seconds=lease_seconds))
            if not await _with_retry(f"saving {subscription.id}", lambda: destinations.save(record), save_retry):
                await deny(session, subscription, "the hub could not store the subscription; subscribe again",
                           allow_networks)
                return False
    log.info("websub: %s verified for %s on %s", mode, subscription.url, subscription.topic)
    return True


async def deny(session: aiohttp.ClientSession, destination: Destination, reason: str,
               allow_networks: tuple[Network, ...]) -> None:
    """Tell the subscriber the hub has ended its subscription (``hub.mode=denied``); a failure is logged."""
    params = {"hub.mode": str(HubMode.DENIED), "hub.topic": destination.echo_topic, "hub.reason": reason}
    try:
        await check_destination(destination.url, allow_networks)
        async with session.get(str(URL(destination.url).update_query(params)), allow_redirects=False) as response:
            await response.content.read(DENY_READ)
    except (TimeoutError, aiohttp.ClientError, OSError, UnsafeDestination) as exc:
        log.info("telling %s its subscription ended failed: %s", destination.url, exc)


class LeaseKeeper:
    """Keeps or ends destinations: the dispatcher asks before every fan-out, and sweeps every few seconds."""

    def __init__(self, destinations: DestinationStore, feeds: dict[str, FeedDefinition],
                 key_table: Callable[[], KeyTable], session: Callable[[], aiohttp.ClientSession],
                 allow_networks: tuple[Network, ...]) -> None:
        self.destinations = destinations
        self.feeds = feeds
        self.key_table = key_table  # () -> KeyTable: the current one
        self.session = session  # () -> the worker's client session, made when it starts
        self.allow_networks = allow_networks

    async def sweep(self) -> None:
        """End subscriptions whose lease ran out, or whose key or partner is no longer valid."""
        now, table = utc_now(), self.key_table()
        for destination in await self.destinations.all():
            await self.keep(destination, now, table)

    async def keep(self, destination: Destination, now: datetime, table: KeyTable) -> bool:
        if destination.expired(now):
            log.info("subscription %s: lease expired", destination.id)
            await self.destinations.remove(destination.id)
            return False
        reason = push_refusal(destination, table, self.feeds, utc_now())
        if reason is not None:
            if destination.kind == WEBHOOK:
                return False  # a disabled partner's endpoints are kept, and get nothing until it is enabled
            log.info("ending subscription %s: %s", destination.id, reason)
            await self.destinations.remove(destination.id)
            await deny(self.session(), destination, reason, self.allow_networks)
            return False
        return True
