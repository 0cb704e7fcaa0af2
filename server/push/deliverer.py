"""The deliverer: claims what is due in the queue and POSTs it, one attempt per claim.

Each round claims up to 100 due deliveries (never more than ``SYNDICATE_PUSH_MAX_IN_FLIGHT`` in flight in this process), hands
back for a moment those of a destination already at ``SYNDICATE_PUSH_CONCURRENCY`` deliveries in this
process, and reads the rest in one go (their destinations, articles, earlier attempts and the
versions their destinations acknowledged). Each claim then travels as a :class:`Job`, a value holding
everything its attempt needs, to its own task: the body (:mod:`server.push.payloads`), the POST, the
attempt in ``syn:push:attempts``, and what :func:`server.push.retry.next_step` says comes next
(acknowledged: the queue ends the delivery and writes the receipt in one script; retry; give up; or
end a subscription that answered 410).

Every attempt sends the article's **current** version, whatever version was queued, unless the
destination has acknowledged it already: then nothing is sent. A payload that cannot be rendered is
given up at once (:attr:`OutcomeKind.UNRENDERABLE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from server.articles.store import ArticleStore
from server.core import keys
from server.core.settings import Settings
from server.core.values import iso, parse_iso, utc_now
from server.domain.articles import Article
from server.domain.feeds import in_feed
from server.domain.partners import KeyTable
from server.observability.metrics import Metrics
from server.partners.ledger import PUSH_PREFIX, PollLedger
from server.push.destinations import WEBSUB, Destination, DestinationStore
from server.push.payloads import Payload, Payloads, delivery_id, photos_allowed, push_headers
from server.push.queue import ATTEMPTS_KEPT, Claim, PushQueue, now_ms
from server.push.retry import (
    MAX_JITTER,
    MIN_JITTER,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    Step,
    StepKind,
    classify,
    next_step,
    parse_retry_after,
)
from server.push.safety import UnsafeDestination, check_literal_address

log = logging.getLogger(__name__)

MAX_BODY_READ = 64 * 1024
BATCH = 100
BUSY_DEFER_MS = 500
NOTHING_LEFT = 1 << 62  # "completed at any version": the destination or article is gone


@dataclass(frozen=True, slots=True)
class Attempts:
    """A delivery's earlier attempts, as kept in ``syn:push:<destination>:state``."""

    version: int | None = None  # the version they sent
    count: int = 0
    first_at: datetime | None = None
    last_error: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Attempts:
        version = record.get("version")
        return cls(int(version) if version is not None else None, int(record.get("attempts", 0)),
                   parse_iso(record.get("firstAttemptAt") or None), record.get("lastError"))

    def to_record(self) -> dict[str, Any]:
        return {"version": self.version, "attempts": self.count, "firstAttemptAt": iso(self.first_at),
                "lastError": self.last_error}

    def of_version(self, version: int) -> Attempts:
        """These attempts, if they were of ``version``; none if they were of an older revision (the
        newer one starts its own count)."""
        return self if self.version in (None, version) else Attempts()


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed delivery and everything read for it with its batch."""

    claim: Claim
    destination: Destination | None  # None: removed since it was queued
    article: Article | None  # None: purged since
    earlier: Attempts
    acked: int = 0  # the highest version the destination acknowledged for the article (0: none)


class Deliverer:
    name = "push-deliver"  # in the job group

    def __init__(self, redis: Redis, store: ArticleStore, destinations: DestinationStore, queue: PushQueue,
                 payloads: Payloads, ledger: PollLedger, key_table: Callable[[], KeyTable], settings: Settings,
                 session: Callable[[], aiohttp.ClientSession], metrics: Metrics,
                 jitter: Callable[[], float] = lambda: random.uniform(MIN_JITTER, MAX_JITTER)) -> None:
        self.redis = redis
        self.store = store
        self.destinations = destinations
        self.queue = queue
        self.payloads = payloads
        self.ledger = ledger
        self.key_table = key_table  # () -> KeyTable: the current one
        self.settings = settings
        self.session = session  # () -> the worker's client session, made when it starts
        self.metrics = metrics
        self.jitter = jitter
        self.policy = RetryPolicy.from_settings(settings.push_give_up_seconds)
        self.hub_url = f"{settings.base_url}/hub"
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._active: dict[str, int] = {}  # deliveries in flight in this process, per destination

    def wake(self) -> None:
        self._wake.set()

    @property
    def lease_ms(self) -> int:
        # A lease shorter than an attempt could let a second worker send a newer version while the
        # first is still sending an older one: never shorter than the timeout plus slack.
        return int(max(self.settings.push_lease_seconds, self.settings.push_timeout_seconds + 5) * 1000)

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and deliver until ``stopping`` is set; between rounds that found less than a full batch,
        sleep until woken or for 0.2 s."""
        while not stopping.is_set():
            try:
                room = min(BATCH, self.settings.push_max_in_flight - len(self._in_flight))
                claims = await self.queue.claim(room, self.lease_ms) if room > 0 else []
            except Exception:
                self.metrics.count_redis_error("push")
                log.exception("claiming deliveries failed; will try again")
                claims = []
            if claims:
                claims = await self._defer_busy(claims)
            if claims:
                # One read for the whole batch (a fan-out is many destinations for one article). The
                # lease keeps each (destination, article) to one attempt at a time, so reading ahead
                # cannot reorder versions: a newer one that lands meanwhile goes out right after.
                try:
                    jobs = await self.prefetch(claims)
                except Exception:
                    self.metrics.count_redis_error("push")
                    log.exception("reading %d claimed deliveries failed; they are handed back", len(claims))
                    await self._hand_back(claims)
                    jobs = []
                for job in jobs:
                    task = asyncio.create_task(self.deliver(job))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
            if len(claims) < BATCH:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.2)

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the deliveries in flight."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout)

    async def _defer_busy(self, claims: list[Claim]) -> list[Claim]:
        """A destination already at its concurrency limit (slow or dead) gets its further deliveries
        handed back for a moment, so it never ties up the worker while others wait. Takes a slot for
        every claim it keeps; :meth:`deliver` gives it back."""
        limit = self.settings.push_concurrency_per_destination
        keep, busy = [], []
        for claim in claims:
            if self._active.get(claim.destination_id, 0) >= limit:
                busy.append(claim)
            else:
                self._active[claim.destination_id] = self._active.get(claim.destination_id, 0) + 1
                keep.append(claim)
        if busy:
            await self.queue.defer(busy, now_ms() + BUSY_DEFER_MS)
        return keep

    async def _hand_back(self, claims: list[Claim]) -> None:
        """Give back claims that will not be attempted now: their slots at once, their leases if Redis
        answers (otherwise the leases run out and they are claimed again)."""
        for claim in claims:
            self._release(claim.destination_id)
        with contextlib.suppress(Exception):
            await self.queue.defer(claims, now_ms() + BUSY_DEFER_MS)

    def _release(self, destination_id: str) -> None:
        remaining = self._active.get(destination_id, 1) - 1
        if remaining > 0:
            self._active[destination_id] = remaining
        else:
            self._active.pop(destination_id, None)

    async def prefetch(self, claims: list[Claim]) -> list[Job]:
        """The claims' destinations, articles, earlier attempts and acknowledged versions, in three round
        trips for the batch."""
        destination_ids = list(dict.fromkeys(c.destination_id for c in claims))
        records = await self.redis.mget([keys.destination(d) for d in destination_ids])
        destinations = {d: self.destinations.decode(r) for d, r in zip(destination_ids, records, strict=True) if r}
        articles = {a.id: a for a in await self.store.get_many(list(dict.fromkeys(c.article_id for c in claims)))}
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                pipe.hget(keys.push_state(claim.destination_id), claim.article_id)
                pipe.hget(keys.push_acked(claim.destination_id), claim.article_id)
            replies = await pipe.execute()
        return [Job(claim, destinations.get(claim.destination_id), articles.get(claim.article_id),
                    Attempts.from_record(orjson.loads(raw)) if raw else Attempts(), int(acked or 0))
                for claim, raw, acked in zip(claims, replies[0::2], replies[1::2], strict=True)]

    async def deliver(self, job: Job) -> None:
        """One attempt; an unexpected error in it is retried shortly. Gives back the destination's slot."""
        try:
            await self._attempt(job)
        except Exception:
            self.metrics.delivery_error(job.destination.kind if job.destination is not None else "unknown")
            log.exception("delivery %s failed unexpectedly; it will be retried", job.claim.member)
            await self._retry_after_error(job)
        finally:
            self._release(job.claim.destination_id)

    async def _retry_after_error(self, job: Job) -> None:
        # Keep counting from the earlier attempts (as stored now), so the give-up rule still applies.
        earlier = Attempts.from_record(await self.queue.state(job.claim))
        version = job.article.version if job.article is not None else 0
        now = utc_now()
        count, first_at = earlier.count + 1, earlier.first_at or now
        step = next_step(Outcome(OutcomeKind.INTERNAL, error="internal error"), count, first_at, now,
                         policy=self.policy)
        await self.queue.retry_at(job.claim, _epoch_ms(step), Attempts(version, count, first_at,
                                                                       "internal error").to_record(), version)

    async def _attempt(self, job: Job) -> None:
        claim, destination, article = job.claim, job.destination, job.article
        if destination is None or article is None:
            await self.queue.complete(claim, NOTHING_LEFT)
            return
        version = article.version  # always the newest revision, whatever was queued
        if not in_feed(article, utc_now(), None):
            # Its newest revision is under embargo or withheld: nothing may go out now. The embargo's
            # lift, or the next revision, queues it again.
            await self.queue.complete(claim, version)
            return
        if version <= job.acked:
            # Acknowledged already (the claim was queued for an older version, say): never sent twice.
            await self.queue.complete(claim, version)
            return
        started = time.monotonic()
        payload = self._payload(destination, article)
        if isinstance(payload, Outcome):
            outcome = payload  # it cannot be rendered: nothing is sent
        else:
            outcome = await self._post(destination, article.id, version, payload)
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        earlier = job.earlier.of_version(version)
        attempt = earlier.count + 1
        record = _attempt_record(destination, article.id, version, attempt, outcome, latency_ms)
        now = utc_now()
        first_at = earlier.first_at or now
        step = next_step(outcome, attempt, first_at, now, policy=self.policy, jitter=self.jitter())
        if step.kind is StepKind.DONE:
            assert isinstance(payload, Payload), payload
            # An acknowledged push counts as received, like a poll that delivered it: the receipt is
            # written by the script that ends the delivery, so no crash can separate the two.
            await self.queue.acknowledged(claim, version, record, destination.partner)
            self.metrics.delivered(destination.kind, "ok", article.latest.ingested_at)
            if destination.partner:
                # The ledger line (the partner's lastPush), buffered like a poll's; the receipt is written.
                self.ledger.record(destination.partner, None, f"{PUSH_PREFIX}{destination.id}", destination.format,
                                   200, len(payload.body), f"push-{article.id}-{version}")
            return
        await self.redis.xadd(keys.push_attempts(), record, maxlen=ATTEMPTS_KEPT, approximate=True)
        if step.kind is StepKind.END:
            log.info("subscription %s answered 410: ending it", destination.id)
            self.metrics.delivered(destination.kind, "gone")
            await self.destinations.remove(destination.id)
        elif step.kind is StepKind.GIVE_UP:
            log.warning("giving up on %s after %d attempts: %s", claim.member, attempt, outcome.error)
            await self.queue.give_up(claim, version, {
                "delivery": delivery_id(destination.id, article.id, version), "kind": destination.kind,
                "destination": destination.id, "partner": destination.partner, "url": destination.url,
                "article": article.id, "version": version, "attempts": attempt, "firstAttemptAt": iso(first_at),
                "lastAttemptAt": iso(utc_now()), "lastStatus": outcome.status, "lastError": outcome.error})
            self.metrics.delivered(destination.kind, "gave_up")
        else:
            self.metrics.delivered(destination.kind, "retry")
            await self.queue.retry_at(claim, _epoch_ms(step),
                                      Attempts(version, attempt, first_at, outcome.error).to_record(), version)

    def _payload(self, destination: Destination, article: Article) -> Payload | Outcome:
        """The body for the article's current version, or, when it cannot be rendered, the outcome that
        says so (a permanent failure: trying again renders the same revision the same way)."""
        try:
            return self.payloads.for_destination(destination, article,
                                                 photos_allowed(destination, self.key_table()), utc_now())
        except Exception as exc:
            log.exception("the payload of %s for %s could not be rendered", article.id, destination.id)
            return Outcome(OutcomeKind.UNRENDERABLE, None,
                           f"payload could not be rendered: {type(exc).__name__}: {exc}"[:300])

    async def _post(self, destination: Destination, article_id: str, version: int, payload: Payload) -> Outcome:
        try:
            # Names are checked by SafeResolver as the connection is made; an address written into the
            # URL never reaches a resolver, so it is checked here.
            check_literal_address(destination.url, self.settings.push_allow_networks)
        except UnsafeDestination as exc:
            return Outcome(OutcomeKind.REFUSED, None, exc.detail)
        headers = push_headers(destination, article_id, version, payload, hub_url=self.hub_url,
                               timestamp=str(int(time.time())))
        try:
            async with self.session().post(destination.url, data=payload.body, headers=headers,
                                           allow_redirects=False) as response:
                await response.content.read(MAX_BODY_READ)  # read a little, never a whole hostile body
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), utc_now(),
                                                self.policy.backoff_cap)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Outcome(OutcomeKind.TRANSIENT, None, f"{type(exc).__name__}: {exc}"[:300])
        return classify(status, destination.kind == WEBSUB, retry_after)


def _epoch_ms(step: Step) -> int:
    assert step.at is not None, step
    return int(step.at.timestamp() * 1000)


def _attempt_record(destination: Destination, article_id: str, version: int, attempt: int, outcome: Outcome,
                    latency_ms: float) -> dict[str, Any]:
    """One entry of ``syn:push:attempts``."""
    return {
        "at": iso(utc_now()), "destination": destination.id, "kind": destination.kind,
        "partner": destination.partner or "", "article": article_id, "version": version, "attempt": attempt,
        "status": outcome.status or 0, "ok": int(outcome.ok), "latencyMs": latency_ms,
        "error": outcome.error or "", "delivery": delivery_id(destination.id, article_id, version),
    }
