"""What ops need to see: per-partner delivery health, propagation of corrections and kills, failed
deliveries, and a manual retry. Read-only views over the ledger, the change log and the push queue
(plus the retry, which re-queues the newest revision). The status API, the dashboard and the CLI all
call these functions, so they always agree. They answer the typed read models of
:mod:`server.ops.models`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from redis.asyncio import Redis

from server.articles.store import ArticleStore
from server.core import keys
from server.core.errors import NotFound
from server.core.values import utc_now
from server.domain.articles import KILL, ChangeKind
from server.domain.delivery import DestinationKind, PartnerStatus
from server.domain.feeds import FeedDefinition
from server.domain.partners import Partner
from server.ops.models import (
    Contact,
    DeliveryAttempt,
    DeliveryReport,
    FailedDelivery,
    FailedDestination,
    Lag,
    Missed,
    MyStatus,
    OutstandingGauge,
    Page,
    PartnerHealth,
    PartnerRow,
    PropagationItem,
    PropagationReceipt,
    PropagationReport,
    QueueSummary,
    RetryAllResult,
    RetryResult,
    StatusOverview,
)
from server.partners.ledger import PUSH_PREFIX, STATUS_WINDOW, PollLedger
from server.partners.propagation import Requirements, Summary, receipts
from server.partners.propagation import partner_status as status_of
from server.partners.store import PartnerStore
from server.push.destinations import DestinationStore
from server.push.queue import PushQueue

BEHIND_AFTER = timedelta(minutes=10)  # an outstanding revision older than this makes a partner "behind"
PROPAGATION_PAGE = 50  # corrections and kills per page of the report
PARTNERS_PER_ITEM = 100  # partners listed per correction or kill (the counts cover them all)
MY_STATUS_PAGE = 100
CONTACTS_SCANNED = 200  # ledger lines read for a partner's last polls and pushes
CONTACTS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class OpsContext:
    store: ArticleStore
    partners: PartnerStore
    ledger: PollLedger
    destinations: DestinationStore
    queue: PushQueue
    feeds: dict[str, FeedDefinition]
    requirements: Requirements
    settle: timedelta = timedelta(milliseconds=250)  # how old a change must be to be judged (see catch_up)

    @property
    def redis(self) -> Redis:
        return self.store.redis


async def overview(ctx: OpsContext, now: datetime | None = None) -> StatusOverview:
    """``GET /api/status``: one row per partner, plus the queue as a whole. Each row reads the partner's
    summaries (its outstanding set and last-used hash), never the change log."""
    now = now or utc_now()
    await ctx.ledger.flush()
    partners, _generation = await ctx.partners.load_all()
    await ctx.requirements.catch_up(ctx.store, _loaded(partners), ctx.feeds.values(), ctx.settle)
    names = [p.name for p in partners]
    summaries = await ctx.requirements.summaries(names)
    seen = await ctx.ledger.last_seen(names)
    attempts: dict[str, list[dict[str, str]]] = {}
    for attempt in await _recent_attempts(ctx.redis, now - timedelta(hours=1)):
        attempts.setdefault(attempt.get("partner", ""), []).append(attempt)
    waiting = await ctx.queue.waiting()
    failed = await failed_deliveries(ctx)
    destinations = await ctx.destinations.all()
    owner = {d.id: d.partner for d in destinations}
    oldest_waiting: dict[str, float] = {}
    depth: dict[str, int] = {}
    for claim, since in waiting:
        name = owner.get(claim.destination_id)
        if name is not None:
            depth[name] = depth.get(name, 0) + 1
            oldest_waiting[name] = min(oldest_waiting.get(name, since), since)
    failed_by: dict[str, list[FailedDelivery]] = {}
    for failure in failed:
        failed_by.setdefault(failure.partner or "", []).append(failure)
    kinds = {d.id: d.kind for d in destinations}
    rows = [_partner_row(p, summaries[p.name], seen[p.name], attempts.get(p.name, []), depth.get(p.name, 0),
                         oldest_waiting.get(p.name), failed_by.get(p.name, []), kinds, now) for p in partners]
    due, in_flight = await ctx.queue.depth()
    oldest = waiting[0][1] if waiting else None
    return StatusOverview(
        generated_at=now,
        partners=tuple(rows),
        queue=QueueSummary(
            depth=len(waiting),
            due=due,
            in_flight=in_flight,
            oldest_pending_seconds=round(max(0.0, now.timestamp() - oldest / 1000), 3) if oldest else None,
            failed=len(failed),
            subscriptions=sum(1 for d in destinations if d.kind == DestinationKind.WEBSUB),
            endpoints=sum(1 for d in destinations if d.kind == DestinationKind.WEBHOOK),
        ),
    )


def _partner_row(partner: Partner, summary: Summary, seen: tuple[datetime | None, datetime | None],
                 tried: list[dict[str, str]], queue_depth: int, oldest: float | None,
                 mine_failed: list[FailedDelivery], kinds: dict[str, str], now: datetime) -> PartnerRow:
    errors = [a for a in tried if a.get("ok") == "0"]
    lag_seconds = max(0.0, (now - summary.oldest_since).total_seconds()) if summary.oldest_since else 0.0
    failing_ids = sorted({f.destination for f in mine_failed} | {a["destination"] for a in errors})
    if mine_failed or (tried and len(errors) / len(tried) > 0.5):
        state = PartnerHealth.FAILING
    elif summary.outstanding and lag_seconds > BEHIND_AFTER.total_seconds():
        state = PartnerHealth.BEHIND
    else:
        state = PartnerHealth.HEALTHY
    return PartnerRow(
        partner=partner.name,
        active=partner.active,
        state=state,
        last_poll=seen[0],
        last_push=seen[1],
        lag=Lag(revisions=summary.lag_revisions, seconds=round(lag_seconds, 3)),
        outstanding=summary.outstanding,
        error_rate=round(len(errors) / len(tried), 3) if tried else None,
        failing_endpoints=tuple(i for i in failing_ids if kinds.get(i) == DestinationKind.WEBHOOK),
        failing_subscriptions=tuple(i for i in failing_ids if kinds.get(i) == DestinationKind.WEBSUB),
        queue_depth=queue_depth,
        oldest_pending_seconds=round(max(0.0, now.timestamp() - oldest / 1000), 3) if oldest else None,
    )


async def catch_up(ctx: OpsContext) -> None:
    """Record the requirements of changes no dispatcher has taken yet (see ``Requirements.catch_up``)."""
    await ctx.requirements.catch_up(ctx.store, lambda: _all_partners(ctx), ctx.feeds.values(), ctx.settle)


async def _all_partners(ctx: OpsContext) -> list[Partner]:
    return (await ctx.partners.load_all())[0]


def _loaded(partners: list[Partner]) -> Callable[[], Awaitable[list[Partner]]]:
    async def given() -> list[Partner]:
        return partners
    return given


async def partner_status(ctx: OpsContext, partner: Partner, now: datetime | None = None) -> PartnerStatus:
    """``GET /api/partners/{name}/status``."""
    await catch_up(ctx)
    return await status_of(partner, ctx.ledger, ctx.requirements, ctx.store, ctx.feeds, now)


async def propagation(ctx: OpsContext, since: datetime | None = None, now: datetime | None = None,
                      offset: int = 0, limit: int = PROPAGATION_PAGE, partner_limit: int = PARTNERS_PER_ITEM,
                      outstanding_first: bool = False) -> PropagationReport:
    """``GET /api/propagation``: the corrections and kills ingested since ``since`` (default: the last
    7 days), newest first (or, with ``outstanding_first``, those not yet received by everyone first),
    one page of them; for each, how many partners must receive it (by the propagation rule, decided
    when the change was dispatched) and have not, and one page of those partners, not received first.
    The totals cover the whole window: one Lua step over the window's items, none over partners."""
    now = now or utc_now()
    since = since or now - STATUS_WINDOW
    await ctx.ledger.flush()
    await catch_up(ctx)
    window = await ctx.requirements.window(since)
    ordered = sorted(window, key=lambda i: (i.outstanding == 0, i.kind != KILL)) if outstanding_first else window
    page = await ctx.requirements.items(ordered[offset:offset + limit])
    items = []
    listed = await ctx.requirements.items_partners([(i.article_id, i.version) for i in page], 0, partner_limit)
    for item, partners in zip(page, listed, strict=True):
        rows = []
        for name, sent, got, at in partners:
            done = got >= item.version
            rows.append(PropagationReceipt(
                partner=name, received=done, received_at=at if done else None, received_version=got or None,
                outstanding_seconds=None if done else round(max(0.0, (now - item.ingested_at).total_seconds()), 3),
                delivery=sent))
        items.append(PropagationItem(
            id=item.article_id, uri=item.uri, kind=ChangeKind(item.kind), version=item.version,
            ingested_at=item.ingested_at, headline=item.headline, partners=tuple(rows),
            outstanding=item.outstanding, required=item.required))
    return PropagationReport(since=since, generated_at=now, items=tuple(items),
                             outstanding=sum(i.outstanding for i in window), total_items=len(window),
                             outstanding_items=sum(1 for i in window if i.outstanding))


async def outstanding_gauges(ctx: OpsContext, now: datetime | None = None) -> list[OutstandingGauge]:
    """For ``/metrics``: per active partner and kind (correction, kill) with any, the window's items it
    has not received and the oldest one's age (one Lua step reading each partner's pending items). A
    partner with none of a kind has no gauge: 1,000 partners that are up to date cost no series."""
    now = now or utc_now()
    await ctx.ledger.flush()
    everyone = (await ctx.partners.load_all())[0]
    await ctx.requirements.catch_up(ctx.store, _loaded(everyone), ctx.feeds.values(), ctx.settle)
    active = [p.name for p in everyone if p.active]
    pending = await ctx.requirements.pending_per_partner(active, now - STATUS_WINDOW)
    return [OutstandingGauge(partner=name, kind=ChangeKind(kind), count=count,
                             oldest_seconds=round(max(0.0, (now - oldest).total_seconds()), 3))
            for name, kind, count, oldest in sorted(pending)]


async def my_status(ctx: OpsContext, partner: Partner, item_url: Callable[[str], str], offset: int = 0,
                    limit: int = MY_STATUS_PAGE, now: datetime | None = None) -> MyStatus:
    """``GET /api/me/status``: what this partner (and only it) must receive and has not, oldest first,
    with where to fetch each, and its last polls and pushes."""
    now = now or utc_now()
    await ctx.ledger.flush()
    await catch_up(ctx)
    total, owed = await ctx.requirements.outstanding_page(partner.name, offset, limit)
    listed = await receipts(partner, owed, ctx.store, ctx.feeds, now)
    last_poll, last_push = (await ctx.ledger.last_seen([partner.name]))[partner.name]
    lines = await ctx.ledger.recent(partner.name, CONTACTS_SCANNED)
    contacts = [Contact(line.at, line.feed, line.format, line.status, line.count) for line in lines]
    return MyStatus(
        partner=partner.name, generated_at=now, outstanding=total,
        missed=tuple(Missed(r, item_url(r.id), f"{item_url(r.id)}/newsml") for r in listed),
        page=Page(offset, limit, total), last_poll=last_poll, last_push=last_push,
        polls=tuple(c for c in contacts if not c.channel.startswith(PUSH_PREFIX))[:CONTACTS_SHOWN],
        pushes=tuple(c for c in contacts if c.channel.startswith(PUSH_PREFIX))[:CONTACTS_SHOWN])


async def deliveries(ctx: OpsContext, partner: str | None = None, failed_only: bool = False,
                     limit: int = 200) -> DeliveryReport:
    """``GET /api/deliveries``: recent attempts (newest first) and the deliveries given up on."""
    entries = await ctx.redis.xrevrange(keys.push_attempts(), "+", "-", count=5000)
    attempts: list[DeliveryAttempt] = []
    for _entry_id, fields in entries:
        if partner is not None and fields.get("partner") != partner:
            continue
        if failed_only and fields.get("ok") == "1":
            continue
        attempts.append(DeliveryAttempt.from_fields(fields))
        if len(attempts) >= limit:
            break
    given_up = [f for f in await failed_deliveries(ctx) if partner is None or f.partner == partner]
    return DeliveryReport(attempts=tuple(attempts), failed=tuple(given_up))


async def failed_destinations(ctx: OpsContext) -> list[FailedDestination]:
    """The failed deliveries grouped by destination, the most recently failing first."""
    return FailedDestination.group(await failed_deliveries(ctx))


async def failed_deliveries(ctx: OpsContext) -> list[FailedDelivery]:
    stored = await ctx.redis.hgetall(keys.push_failed())
    return sorted((FailedDelivery.from_record(orjson.loads(v)) for v in stored.values()),
                  key=lambda f: f.last_attempt_at or "", reverse=True)


async def retry(ctx: OpsContext, delivery: str) -> RetryResult:
    """Send a failed delivery again: the newest revision of its article, as a fresh delivery."""
    stored = await ctx.redis.hgetall(keys.push_failed())
    for member, raw in stored.items():
        failure = orjson.loads(raw)
        if failure.get("delivery") != delivery:
            continue
        article = await ctx.store.get(failure["article"])
        if article is None or await ctx.destinations.get(failure["destination"]) is None:
            await ctx.redis.hdel(keys.push_failed(), member)
            raise NotFound(f"Delivery {delivery}: its article or destination no longer exists.")
        if not await ctx.redis.hdel(keys.push_failed(), member):
            raise NotFound(f"Delivery {delivery} is being retried already.")
        await ctx.queue.enqueue([failure["destination"]], article.id, article.version)
        return RetryResult(delivery=delivery, destination=failure["destination"], article=article.id,
                           version=article.version)
    raise NotFound(f"No failed delivery {delivery!r}.")


async def retry_destination(ctx: OpsContext, destination_id: str) -> RetryAllResult:
    """Send every failed delivery of one destination again (each its article's newest revision)."""
    if await ctx.destinations.get(destination_id) is None:
        raise NotFound(f"No destination {destination_id!r}.")
    prefix = f"{destination_id}|"
    deliveries_ = []
    async for member, raw in ctx.redis.hscan_iter(keys.push_failed(), match=f"{prefix}*", count=500):
        if member.startswith(prefix):
            deliveries_.append(orjson.loads(raw)["delivery"])
    requeued = []
    for delivery in deliveries_:
        try:
            requeued.append(await retry(ctx, delivery))
        except NotFound:
            continue  # retried by someone else meanwhile, or its article is gone
    return RetryAllResult(destination=destination_id, requeued=tuple(requeued))


async def _recent_attempts(redis: Redis, since: datetime) -> list[dict[str, str]]:
    start = f"{int(since.timestamp() * 1000)}-0"
    return [fields for _entry_id, fields in await redis.xrange(keys.push_attempts(), start, "+")]
