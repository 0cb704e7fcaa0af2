"""The dispatcher: the change log's consumer group, fanned out into the delivery queue.

Each change-log entry (other than a purge) is read once by some worker through the consumer group
``push`` and fanned out: every destination that should get the article has (destination, article,
version) put in the :class:`~server.push.queue.PushQueue`, then the entry is acknowledged. A worker that
dies mid-fan-out leaves its entries pending; another takes them over after 30 s.

Which destinations should get an article is decided here and only here: :func:`may_still_push` (is the
destination still entitled to anything at all), :func:`wants` (may it carry the article's latest revision
as content) and :func:`chosen` (the propagation rule, :mod:`server.domain.propagation`: a destination of a
partner that must receive the revision but may not read it, because it had the story before a re-filing
or a change of grants, gets the kill or withdrawal notice). The fan-out also records, per partner, what it
must receive (:class:`~server.partners.propagation.Requirements`), which the ops views read. Lease expiry, and ending a subscription that is no longer entitled, belong to the
:class:`Keeper` passed in (:class:`server.push.websub.LeaseKeeper`), which this module does not import.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from server.articles.store import ArticleStore
from server.core import keys
from server.core.values import utc_now
from server.domain.access import Refusal, feed_refusal, may_read_item
from server.domain.articles import PURGE, Article
from server.domain.feeds import FeedDefinition, in_feed
from server.domain.partners import KeyTable, Partner
from server.domain.propagation import Delivery, may_read_now
from server.observability.metrics import Metrics
from server.partners.ledger import STATUS_WINDOW
from server.partners.propagation import Requirements
from server.push.destinations import WEBHOOK_FEED_FORMATS, WEBSUB, Destination, DestinationStore
from server.push.queue import PushQueue

log = logging.getLogger(__name__)

# KEYS 1: the reactivated partners. ARGV: a name, the generation noted. Deletes the note if unchanged.
_FORGET_NOTE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

SWEEP_SECONDS = 5.0  # how often every destination goes through the keeper without a change
BATCH = 100
TAKE_OVER_AFTER_MS = 30_000  # entries another consumer read this long ago and never acknowledged


async def ensure_dispatch_group(redis: Redis, *, from_start: bool = False) -> None:
    """The change log's consumer group, made by every process that can write changes before it takes
    any (not only by workers): a change stored before the first worker starts is still fanned out.

    At start-up a new group starts at the log's end. ``from_start`` (the store came back empty or
    from a copy without the group, ``EpochWatch``): at its first entry, since every entry there was
    written on this store after it came back and none has been fanned out."""
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
        await redis.xgroup_create(keys.changelog(), keys.DISPATCH_GROUP, id="0" if from_start else "$",
                                  mkstream=True)


# ----- who gets what --------------------------------------------------------------------------------


def may_still_push(destination: Destination, table: KeyTable, feeds: dict[str, FeedDefinition],
                   now: datetime) -> bool:
    """Whether anything may still be pushed to the destination (:func:`push_refusal` gives none)."""
    return push_refusal(destination, table, feeds, now) is None


_ENTITLEMENT_REASONS = {
    Refusal.INACTIVE: "the partner was disabled",
    Refusal.FEED: "the partner is no longer entitled to this topic's feed",
    Refusal.FORMAT: "the partner is no longer entitled to this topic's format",
    Refusal.NEEDS_KEY: "this topic now needs a partner key",
}


def push_refusal(destination: Destination, table: KeyTable, feeds: dict[str, FeedDefinition],
                 now: datetime) -> str | None:
    """Why nothing may be pushed to the destination any more (the ``hub.reason`` a subscriber is told),
    or None: a public subscriber is always served; a partner's destination while the partner is active,
    and a subscription while the topic is still the partner's to read (the access policy) and the key it
    subscribed with is usable."""
    if destination.partner is None:
        return None
    partner = table.partners.get(destination.partner)
    if partner is None:
        return "the partner no longer exists"
    if not partner.active:
        return _ENTITLEMENT_REASONS[Refusal.INACTIVE]
    if destination.kind == WEBSUB:
        feed = feeds.get(destination.feed or "")
        if feed is None:
            return "this hub no longer serves the topic's feed"
        # Entitlements can change after subscribing: the topic must still be the partner's to read.
        refusal = feed_refusal(partner, feed, destination.format)
        if refusal is not None:
            return _ENTITLEMENT_REASONS.get(refusal, "the partner may no longer read this topic")
        # Subscribed with a key (even to a public feed): revoking that key ends the subscription.
        key = next((k for k in partner.keys if k.key_id == destination.key_id), None)
        if key is None or not key.usable(now):
            return "the partner key it subscribed with was revoked or has expired"
    return None


def wants(destination: Destination, article: Article, table: KeyTable, feeds: dict[str, FeedDefinition]) -> bool:
    """Whether the destination wants the article's latest revision, by the access policy: a subscription
    if its topic's feed holds it (and its subscriber may read that feed); an endpoint if a feed its
    partner may read in the feed format the webhook format needs holds it."""
    partner = table.partners.get(destination.partner) if destination.partner else None
    if destination.kind == WEBSUB:
        feed = feeds.get(destination.feed or "")
        return feed is not None and may_read_item(partner, article.latest, (feed,), destination.format)
    return partner is not None and may_read_item(partner, article.latest, feeds.values(),
                                                 WEBHOOK_FEED_FORMATS[destination.format])


def chosen(destination: Destination, article: Article, table: KeyTable, feeds: dict[str, FeedDefinition],
           required: dict[str, Delivery]) -> bool:
    """Whether the destination gets the article's latest revision: it may carry it (:func:`wants`), or
    its partner must receive it as a notice (``required``: partner -> what it must be sent, by the
    propagation rule), in which case every destination of that partner gets the notice."""
    if wants(destination, article, table, feeds):
        return True
    if destination.partner is None or destination.partner not in required:
        return False
    # A partner that may read the revision in some feed gets it through the destinations that carry it;
    # one that may not (it had the story) gets the notice at every destination.
    partner = table.partners.get(destination.partner)
    return partner is not None and not may_read_now(partner, article.latest, feeds.values())


class Keeper(Protocol):
    """Decides whether a destination is kept (leases, revoked entitlements) and sweeps them all."""

    async def keep(self, destination: Destination, now: datetime, table: KeyTable) -> bool: ...

    async def sweep(self) -> None: ...


# ----- the consumer ---------------------------------------------------------------------------------


class Dispatcher:
    name = "push-dispatch"  # in the job group

    def __init__(self, redis: Redis, store: ArticleStore, destinations: DestinationStore, queue: PushQueue,
                 feeds: dict[str, FeedDefinition], key_table: Callable[[], KeyTable], keeper: Keeper,
                 consumer: str, metrics: Metrics, requirements: Requirements, settle_seconds: float = 0.0) -> None:
        self.redis = redis
        self.store = store
        self.destinations = destinations
        self.queue = queue
        self.feeds = feeds
        self.key_table = key_table  # () -> KeyTable: the current one
        self.keeper = keeper
        self.consumer = consumer
        self.metrics = metrics
        self.requirements = requirements
        # Receipts are buffered up to a flush interval in every process: a change is judged only once
        # the receipts of everything served before it are in Redis ("had the story" reads them).
        self.settle_seconds = settle_seconds
        self._forget_note = redis.register_script(_FORGET_NOTE_LUA)
        # Why the last round failed (the exception's type), None once a round succeeded: /readyz is not
        # ready while the change log cannot be read (Redis down, or its consumer group gone: NOGROUP).
        self.failing: str | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Fan out changes until ``stopping`` is set; every ``SWEEP_SECONDS`` also sweep (in this same
        loop, so a sweep and a fan-out never judge one destination at once)."""
        last_sweep = 0.0
        while not stopping.is_set():
            try:
                await self.dispatch_once(block_ms=500)
                if time.monotonic() - last_sweep > SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    await self.keeper.sweep()
                    await self.owe_reactivated()
                self.failing = None
            except Exception as exc:
                self.failing = type(exc).__name__
                self.metrics.count_redis_error("push")
                log.exception("fanning out changes failed; will try again")
                await asyncio.sleep(1)

    async def dispatch_once(self, block_ms: int) -> int:
        """One round: take over stale entries, read new ones, fan each out and acknowledge it."""
        # Changes another worker took but never acknowledged (it died) are taken over after 30 s.
        _next, stale, *_ = await self.redis.xautoclaim(keys.changelog(), keys.DISPATCH_GROUP, self.consumer,
                                                       min_idle_time=TAKE_OVER_AFTER_MS, start_id="0-0", count=BATCH)
        fresh = await self.redis.xreadgroup(keys.DISPATCH_GROUP, self.consumer, {keys.changelog(): ">"},
                                            count=BATCH, block=block_ms)
        entries = list(stale) + [e for _stream, batch in fresh for e in batch]
        for entry_id, fields in entries:
            if fields and fields.get("kind") != PURGE:
                await self.fan_out(fields["id"], int(fields.get("version") or 0) or None)
            await self.redis.xack(keys.changelog(), keys.DISPATCH_GROUP, entry_id)
        return len(entries)

    async def fan_out(self, article_id: str, version: int | None = None) -> list[str]:
        """Record who must receive the change's revision (``version``; default the newest), and queue the
        article's newest revision for every destination that should get it."""
        article = await self.store.get(article_id)
        if article is None or not in_feed(article, utc_now(), None):
            return []  # under embargo or withheld: its release or next revision will come through here
        wait = self.settle_seconds - (utc_now() - article.latest.ingested_at).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        now = utc_now()
        table = self.key_table()
        destinations = [d for d in await self.destinations.all() if await self.keeper.keep(d, now, table)]
        if version is not None and version < article.version:
            # A later change follows (it will be fanned out with its notices): record who must receive
            # this revision, as of this revision.
            older = dataclasses.replace(article, latest=await self.store.revision(article.id, version))
            await self.requirements.record(self.store, older, table.partners.values(), self.feeds.values(),
                                           await self.awaiting(older, destinations, table))
            required = {}
        else:
            required = await self.requirements.record(self.store, article, table.partners.values(),
                                                      self.feeds.values(),
                                                      await self.awaiting(article, destinations, table))
        picked = []
        for destination in destinations:
            if chosen(destination, article, table, self.feeds, required):
                picked.append(destination.id)
        await self.queue.enqueue(picked, article.id, article.version)
        return picked

    async def owe_reactivated(self) -> int:
        """Partners enabled again (``PartnerStore`` notes each with the generation that did it) were judged
        inactive when the changes of that time were dispatched, so nothing was required of them: each is
        now owed the newest revision of every story of the status window it had (its receipts hold it)
        at an older version, as if it had been active then (the correction or kill pushed to its
        webhooks, recorded for the ops views). A note waits until this process's key table is as new as
        it; then it is done (or dropped: the partner was disabled again, or deleted) and deleted, only if
        no later re-activation replaced it. Redoing a
        note (a worker killed half-way) is harmless: recording is idempotent and the queue keeps one
        delivery per destination and article. Returns how many partners were caught up."""
        notes = await self.redis.hgetall(keys.partners_reactivated())
        table, done = self.key_table(), 0
        for name, generation in notes.items():
            if table.generation < int(generation):
                continue  # this process has not seen that change yet
            partner = table.partners.get(name)
            if partner is not None and partner.active:
                await self._owe_again(partner, table)
                done += 1
            await self._forget_note(keys=[keys.partners_reactivated()], args=[name, generation])
        return done

    async def _owe_again(self, partner: Partner, table: KeyTable) -> None:
        now = utc_now()
        changed = await self.store.ids_changed_since(now - STATUS_WINDOW)
        if not changed:
            return
        receipts = await self.redis.hmget(keys.partner_received(partner.name), changed)
        had = {a: int(r.partition("|")[0]) for a, r in zip(changed, receipts, strict=True) if r is not None}
        behind = [a for a, version in (await self.store.versions(list(had))).items() if version > had[a]]
        destinations = [d for d in await self.destinations.all()
                        if d.partner == partner.name and await self.keeper.keep(d, now, table)]
        for start in range(0, len(behind), BATCH):
            for article in await self.store.get_many(behind[start:start + BATCH]):
                if not in_feed(article, now, None):
                    continue  # under embargo or withheld: its release will come through the change log
                required = await self.requirements.record(self.store, article, (partner,), self.feeds.values(),
                                                          await self.awaiting(article, destinations, table))
                await self.queue.enqueue([d.id for d in destinations
                                          if chosen(d, article, table, self.feeds, required)],
                                         article.id, article.version)
        log.info("partner %s enabled again: owed the newest revision of %d stories it had", partner.name, len(behind))

    async def awaiting(self, article: Article, destinations: list[Destination], table: KeyTable) -> frozenset[str]:
        """Partners that may not read the article's latest revision but have an earlier one queued or in
        flight to one of their destinations: they are about to have the story (no receipt yet), so the
        rule counts them as having had it. Read before the receipts are (in the requirement's script): a
        delivery acknowledged in between has written its receipt by then."""
        candidates = [d for d in destinations if d.partner is not None and d.partner in table.partners
                      and not may_read_now(table.partners[d.partner], article.latest, self.feeds.values())]
        if not candidates:
            return frozenset()
        held = await self.queue.holding(article.id, [d.id for d in candidates])
        return frozenset(d.partner for d in candidates if d.partner is not None and d.id in held)
