"""Pushing changes out: the dispatcher fans each change-log entry out to the destinations that should
get it, and the deliverer POSTs what is due, signed, with retries.

The dispatcher reads the change log through a Redis consumer group, so each change is fanned out once
however many workers run, and a change taken by a worker that died is claimed by another. Fanning out
only puts (destination, article, version) in the :class:`~server.push.queue.PushQueue`; the deliverer
then sends the newest revision at the moment it sends. Workers run inside every server process by
default, and as ``syndicate worker`` processes for scale-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import logging
import random
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from yarl import URL

from server.articles.store import ArticleStore
from server.core import keys
from server.core.settings import Settings
from server.core.values import iso, utc_now
from server.domain.articles import PURGE, Article
from server.domain.feeds import FeedDefinition, in_feed
from server.domain.partners import KeyTable
from server.feeds.builder import RENDERERS, FeedBuilder
from server.feeds.render import (
    NEWSML_ITEM_MEDIA_TYPE,
    FeedView,
    ItemView,
    render_atom_entry,
    render_newsml_news_item,
)
from server.observability.metrics import observe
from server.partners.ledger import PUSH_PREFIX, PollLedger
from server.push.destinations import WEBHOOK, WEBHOOK_FEED_FORMATS, WEBSUB, Destination, DestinationStore
from server.push.queue import Claim, PushQueue, now_ms
from server.push.safety import SafeResolver, UnsafeDestination, check_destination, check_literal_address

log = logging.getLogger(__name__)

MAX_BODY_READ = 64 * 1024
ATTEMPTS_KEPT = 100_000
SWEEP_SECONDS = 5.0
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 600.0
# A NewsML-G2 webhook gets the article as a bare newsItem (what the issue asks for; its pictures are
# referenced by guid); the single-item URL and WebSub NewsML topics carry them in a newsMessage.
WEBHOOK_MEDIA_TYPES = {"newsml": NEWSML_ITEM_MEDIA_TYPE, "ninjs": "application/json",
                       "atom": "application/atom+xml;type=entry"}


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: int | None
    error: str | None
    retry: bool
    retry_after: float | None = None
    gone: bool = False  # 410 from a WebSub callback: the subscription ends


async def ensure_dispatch_group(redis: Redis) -> None:
    """The change log's consumer group, made by every process that can write changes before it takes
    any (not only by workers): a change stored before the first worker starts is still fanned out."""
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
        await redis.xgroup_create(keys.changelog(), keys.DISPATCH_GROUP, id="$", mkstream=True)


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_websub(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(destination_id: str, article_id: str, version: int) -> str:
    """The same on every retry of one revision to one destination, so receivers can de-duplicate."""
    return hashlib.sha256(f"{destination_id}|{article_id}|{version}".encode()).hexdigest()[:32]


class PushWorker:
    def __init__(self, redis: Redis, store: ArticleStore, destinations: DestinationStore, queue: PushQueue,
                 builder: FeedBuilder, feeds: dict[str, FeedDefinition], ledger: PollLedger,
                 key_table: callable, settings: Settings, consumer: str) -> None:
        self.redis = redis
        self.store = store
        self.destinations = destinations
        self.queue = queue
        self.builder = builder
        self.feeds = feeds
        self.ledger = ledger
        self.key_table = key_table  # () -> KeyTable: the current one
        self.settings = settings
        self.consumer = consumer
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._in_flight: set[asyncio.Task] = set()
        self._active: dict[str, int] = {}  # deliveries in flight per destination
        self._states: dict[str, dict] = {}  # claim member -> its earlier attempts, read with the batch
        self._bodies: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_dispatch_group(self.redis)
        # Concurrency is limited per destination by the worker (not per host: many callbacks of one
        # aggregator share a host). The resolver refuses forbidden addresses at connect time, so a name
        # re-pointed after the registration check still cannot reach an internal address.
        connector = aiohttp.TCPConnector(limit=200, limit_per_host=0, family=socket.AF_UNSPEC, keepalive_timeout=30,
                                         resolver=SafeResolver(self.settings.push_allow_networks))
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.settings.push_timeout_seconds),
            auto_decompress=False)
        self._tasks = [asyncio.create_task(self._dispatch_loop()), asyncio.create_task(self._deliver_loop())]

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for task in self._tasks:
            task.cancel()  # the flag covers a cancellation redis-py swallows inside a blocking read
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=2)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=10)
        if self._session is not None:
            await self._session.close()

    @property
    def running(self) -> bool:
        """Started, and none of its loops has ended."""
        return bool(self._tasks) and all(not task.done() for task in self._tasks)

    def wake(self, _message: str = "") -> None:
        self._wake.set()

    # ----- fan-out -------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        last_sweep = 0.0
        while not self._stop.is_set():
            try:
                await self._dispatch_once(block_ms=500)
                if time.monotonic() - last_sweep > SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except Exception:
                observe(self).count_redis_error("push")
                log.exception("fanning out changes failed; will try again")
                await asyncio.sleep(1)

    async def sweep(self) -> None:
        """End subscriptions whose lease ran out, or whose key or partner is no longer valid."""
        now, table = utc_now(), self.key_table()
        for destination in await self.destinations.all():
            await self._keep(destination, now, table)

    async def _keep(self, destination: Destination, now, table: KeyTable) -> bool:
        if destination.expired(now):
            log.info("subscription %s: lease expired", destination.id)
            await self.destinations.remove(destination.id)
            return False
        if not self._still_allowed(destination, table):
            if destination.kind == WEBHOOK:
                return False  # a disabled partner's endpoints are kept, and get nothing until it is enabled
            log.info("ending subscription %s: its key or partner is no longer valid", destination.id)
            await self.destinations.remove(destination.id)
            await self._deny(destination, "the partner key was revoked or the partner disabled")
            return False
        return True

    async def _deny(self, destination: Destination, reason: str) -> None:
        """WebSub: tell the subscriber the hub has ended its subscription (``hub.mode=denied``)."""
        params = {"hub.mode": "denied", "hub.topic": destination.topic or "", "hub.reason": reason}
        try:
            await check_destination(destination.url, self.settings.push_allow_networks)
            assert self._session is not None
            async with self._session.get(str(URL(destination.url).update_query(params)),
                                         allow_redirects=False) as response:
                await response.content.read(MAX_BODY_READ)
        except (TimeoutError, aiohttp.ClientError, OSError, UnsafeDestination) as exc:
            log.info("telling %s its subscription ended failed: %s", destination.url, exc)

    async def _dispatch_once(self, block_ms: int) -> int:
        # Changes another worker took but never acknowledged (it died) are taken over after 30 s.
        _next, stale, *_ = await self.redis.xautoclaim(keys.changelog(), keys.DISPATCH_GROUP, self.consumer,
                                                       min_idle_time=30_000, start_id="0-0", count=100)
        fresh = await self.redis.xreadgroup(keys.DISPATCH_GROUP, self.consumer, {keys.changelog(): ">"},
                                            count=100, block=block_ms)
        entries = list(stale) + [e for _stream, batch in fresh for e in batch]
        for entry_id, fields in entries:
            if fields and fields.get("kind") != PURGE:
                await self.fan_out(fields["id"])
            await self.redis.xack(keys.changelog(), keys.DISPATCH_GROUP, entry_id)
        return len(entries)

    async def fan_out(self, article_id: str) -> list[str]:
        """Queue the article's newest revision for every destination that should get it."""
        article = await self.store.get(article_id)
        if article is None or not in_feed(article, utc_now(), None):
            return []  # under embargo or withheld: its release or next revision will come through here
        now = utc_now()
        table: KeyTable = self.key_table()
        chosen = []
        for destination in await self.destinations.all():
            if not await self._keep(destination, now, table):
                continue
            if self._wants(destination, article, table):
                chosen.append(destination.id)
        await self.queue.enqueue(chosen, article.id, article.version)
        return chosen

    def _still_allowed(self, destination: Destination, table: KeyTable) -> bool:
        if destination.partner is None:
            return True
        partner = table.partners.get(destination.partner)
        if partner is None or not partner.active:
            return False
        if destination.kind == WEBSUB:
            feed = self.feeds.get(destination.feed or "")
            if feed is None:
                return False
            # Entitlements can change after subscribing: the topic must still be the partner's to read.
            if not feed.public and not (partner.may_read_feed(feed.name) and partner.may_read_format(destination.format)):
                return False
            # Subscribed with a key (even to a public feed): revoking that key ends the subscription.
            return any(k.key_id == destination.key_id and k.usable(utc_now()) for k in partner.keys)
        return True

    def _wants(self, destination: Destination, article: Article, table: KeyTable) -> bool:
        if destination.kind == WEBSUB:
            feed = self.feeds.get(destination.feed or "")
            return feed is not None and feed.holds(article.latest)
        partner = table.partners.get(destination.partner or "")
        return partner is not None and partner.may_read_format(WEBHOOK_FEED_FORMATS[destination.format]) and any(
            partner.may_read_feed(name) and feed.holds(article.latest) for name, feed in self.feeds.items())

    # ----- delivery ------------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            try:
                # A lease shorter than an attempt could let a second worker send a newer version while
                # the first is still sending an older one: never shorter than the timeout plus slack.
                lease_ms = int(max(self.settings.push_lease_seconds, self.settings.push_timeout_seconds + 5) * 1000)
                claims = await self.queue.claim(100, lease_ms) if len(self._in_flight) < 500 else []
            except Exception:
                observe(self).count_redis_error("push")
                log.exception("claiming deliveries failed; will try again")
                claims = []
            if claims:
                claims = await self._defer_busy(claims)
            if claims:
                # One read for the whole batch (a fan-out is many destinations for one article). The
                # lease keeps each (destination, article) to one attempt at a time, so reading ahead
                # cannot reorder versions: a newer one that lands meanwhile goes out right after.
                destinations, articles = await self._prefetch(claims)
                for claim in claims:
                    task = asyncio.create_task(self._deliver(claim, destinations.get(claim.destination_id),
                                                             articles.get(claim.article_id)))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
            if len(claims) < 100:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.2)

    async def _defer_busy(self, claims: list[Claim]) -> list[Claim]:
        """A destination already at its concurrency limit (slow or dead) gets its further deliveries
        handed back for a moment, so it never ties up the worker while others wait."""
        limit = self.settings.push_concurrency_per_destination
        keep, busy = [], []
        for claim in claims:
            if self._active.get(claim.destination_id, 0) >= limit:
                busy.append(claim)
            else:
                self._active[claim.destination_id] = self._active.get(claim.destination_id, 0) + 1
                keep.append(claim)
        if busy:
            await self.queue.defer(busy, now_ms() + 500)
        return keep

    async def _prefetch(self, claims: list[Claim]) -> tuple[dict[str, Destination], dict[str, Article]]:
        destination_ids = list(dict.fromkeys(c.destination_id for c in claims))
        records = await self.redis.mget([keys.destination(d) for d in destination_ids])
        destinations = {d: Destination.from_record(orjson.loads(r)) for d, r in zip(destination_ids, records,
                                                                                   strict=True) if r}
        articles = await self.store.get_many(list(dict.fromkeys(c.article_id for c in claims)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                pipe.hget(keys.push_state(claim.destination_id), claim.article_id)
            states = await pipe.execute()
        # A claim's earlier attempts (none, for a first try) travel with it: no read per delivery.
        self._states = {claim.member: orjson.loads(raw) if raw else {} for claim, raw in zip(claims, states,
                                                                                                strict=True)}
        return destinations, {a.id: a for a in articles}

    async def _deliver(self, claim: Claim, destination: Destination | None, article: Article | None) -> None:
        try:
            await self._attempt(claim, destination, article)
        except Exception:
            observe(self).delivery_error(destination.kind if destination is not None else "unknown")
            log.exception("delivery %s failed unexpectedly; it will be retried", claim.member)
            # Keep counting from the earlier attempts, so the give-up rule still applies to it.
            state = await self.queue.state(claim)
            version = article.version if article is not None else 0
            await self.queue.retry_at(claim, now_ms() + 5000, {
                **state, "version": version, "attempts": int(state.get("attempts", 0)) + 1,
                "firstAttemptAt": state.get("firstAttemptAt") or iso(utc_now()), "lastError": "internal error"},
                version)
        finally:
            remaining = self._active.get(claim.destination_id, 1) - 1
            if remaining > 0:
                self._active[claim.destination_id] = remaining
            else:
                self._active.pop(claim.destination_id, None)

    async def _attempt(self, claim: Claim, destination: Destination | None, article: Article | None) -> None:
        state = self._states.pop(claim.member, None)
        if destination is None or article is None:
            await self.queue.complete(claim, 1 << 62)
            return
        version = article.version  # always the newest revision, whatever was queued
        if not in_feed(article, utc_now(), None):
            # Its newest revision is under embargo or withheld: nothing may go out now. The embargo's
            # lift, or the next revision, queues it again.
            await self.queue.complete(claim, version)
            return
        body, content_type = self._body(destination, article)
        started = time.monotonic()
        outcome = await self._post(destination, article, version, body, content_type)
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        if state is None:
            state = await self.queue.state(claim)
        if state.get("version", version) != version:
            state = {}  # earlier attempts were of an older revision: this one starts its own count
        attempt = int(state.get("attempts", 0)) + 1
        record = self._attempt_record(destination, article, version, attempt, outcome, latency_ms)
        if outcome.ok:
            await self.queue.complete(claim, version, record)
            observe(self).delivered(destination.kind, "ok", article.latest.ingested_at)
            if destination.partner:
                # An acknowledged push counts as received, like a poll that delivered it.
                self.ledger.record(destination.partner, None, f"{PUSH_PREFIX}{destination.id}", destination.format,
                                   200, len(body), f"push-{article.id}-{version}", ((article.id, version),))
            return
        await self.redis.xadd(keys.push_attempts(), record, maxlen=ATTEMPTS_KEPT, approximate=True)
        if outcome.gone:
            log.info("subscription %s answered 410: ending it", destination.id)
            observe(self).delivered(destination.kind, "gone")
            await self.destinations.remove(destination.id)
            return
        first_try = state.get("firstAttemptAt") or iso(utc_now())
        failure = {"delivery": delivery_id(destination.id, article.id, version), "kind": destination.kind,
                   "destination": destination.id, "partner": destination.partner, "url": destination.url,
                   "article": article.id, "version": version, "attempts": attempt, "firstAttemptAt": first_try,
                   "lastAttemptAt": iso(utc_now()), "lastStatus": outcome.status, "lastError": outcome.error}
        give_up_at = (utc_now() - timedelta(seconds=self.settings.push_give_up_seconds)).isoformat()
        if not outcome.retry or first_try.replace("Z", "+00:00") <= give_up_at:
            log.warning("giving up on %s after %d attempts: %s", claim.member, attempt, outcome.error)
            await self.queue.give_up(claim, version, failure)
            observe(self).delivered(destination.kind, "gave_up")
            return
        delay = outcome.retry_after if outcome.retry_after is not None else min(
            BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        observe(self).delivered(destination.kind, "retry")
        await self.queue.retry_at(claim, now_ms() + int(delay * 1000),
                                  {"version": version, "attempts": attempt, "firstAttemptAt": first_try,
                                   "lastError": outcome.error}, version)

    async def _post(self, destination: Destination, article: Article, version: int, body: bytes,
                    content_type: str) -> Outcome:
        try:
            # Names are checked by SafeResolver as the connection is made; an address written into the
            # URL never reaches a resolver, so it is checked here.
            check_literal_address(destination.url, self.settings.push_allow_networks)
        except UnsafeDestination as exc:
            return Outcome(False, None, exc.detail, retry=False)
        headers = {"Content-Type": content_type, "User-Agent": "syndicate-push/1"}
        if destination.kind == WEBHOOK:
            timestamp = str(int(time.time()))
            headers |= {"X-Syndicate-Delivery": delivery_id(destination.id, article.id, version),
                        "X-Syndicate-Timestamp": timestamp,
                        "X-Syndicate-Signature": sign_webhook(destination.secret or "", timestamp, body)}
        else:
            headers["Link"] = f'<{self.settings.base_url}/hub>; rel="hub", <{destination.topic}>; rel="self"'
            headers["X-Syndicate-Delivery"] = delivery_id(destination.id, article.id, version)
            if destination.secret:
                headers["X-Hub-Signature"] = sign_websub(destination.secret, body)
        assert self._session is not None
        try:
            async with self._session.post(destination.url, data=body, headers=headers,
                                          allow_redirects=False) as response:
                await response.content.read(MAX_BODY_READ)  # read a little, never a whole hostile body
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:300], retry=True)
        if 200 <= status < 300:
            return Outcome(True, status, None, retry=False)
        if status == 410 and destination.kind == WEBSUB:
            return Outcome(False, status, "410 Gone", retry=False, gone=True)
        retry = status >= 500 or status in (408, 429)
        return Outcome(False, status, f"HTTP {status}", retry=retry, retry_after=retry_after)

    def _body(self, destination: Destination, article: Article) -> tuple[bytes, str]:
        """What a destination is sent, made once per revision, format and photo rights."""
        media = True
        if destination.partner is not None:
            partner = self.key_table().partners.get(destination.partner)
            media = partner.media if partner else True
        cache_key = (article.id, article.version, destination.kind, destination.format, destination.feed, media)
        cached = self._bodies.get(cache_key)
        if cached is not None:
            return cached
        if destination.kind == WEBSUB:
            feed = self.feeds[destination.feed or ""]
            rendered = self.builder.render(feed, destination.format, [article], since=None,
                                           cursor=article.change_seq, generation=0, now=utc_now(),
                                           include_photos=media)
            result = (rendered.bodies["identity"], RENDERERS[destination.format][0])
        else:
            item_url = self.builder.item_url(article.id)
            item = ItemView.from_revision(article.latest, item_url)
            view = FeedView(name="push", title="Push", description="One article", language=None,
                            self_url=item_url, alternate_url=item_url, hub_url=f"{self.settings.base_url}/hub",
                            built_at=article.latest.ingested_at, render_id=f"{article.id}-{article.version}",
                            include_photos=media)
            if destination.format == "newsml":
                body = render_newsml_news_item(view, item)
            elif destination.format == "atom":
                body = render_atom_entry(view, item)
            else:
                document = article.latest.document or {"uri": article.uri, "type": "text", "pubStatus": "canceled"}
                if not media:
                    document = {k: v for k, v in document.items() if k != "associations"}
                body = orjson.dumps(document)
            result = (body, WEBHOOK_MEDIA_TYPES[destination.format])
        self._bodies[cache_key] = result
        if len(self._bodies) > 2000:
            self._bodies.popitem(last=False)
        return result

    @staticmethod
    def _attempt_record(destination: Destination, article: Article, version: int, attempt: int,
                        outcome: Outcome, latency_ms: float) -> dict:
        return {
            "at": iso(utc_now()), "destination": destination.id, "kind": destination.kind,
            "partner": destination.partner or "", "article": article.id, "version": version, "attempt": attempt,
            "status": outcome.status or 0, "ok": int(outcome.ok), "latencyMs": latency_ms,
            "error": outcome.error or "", "delivery": delivery_id(destination.id, article.id, version),
        }


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP-date), at least 1 s, at most the
    backoff cap; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (email.utils.parsedate_to_datetime(value) - utc_now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 1.0), BACKOFF_CAP_SECONDS)

