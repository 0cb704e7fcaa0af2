"""What ops need to see: per-partner delivery health, propagation of corrections and kills, failed
deliveries, and a manual retry. Read-only views over the ledger, the change log and the push queue
(plus the retry, which re-queues the newest revision). The status API, the dashboard and the CLI all
call these functions, so they always agree. They answer the typed read models of
:mod:`server.ops.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from redis.asyncio import Redis

from server.articles.store import ArticleStore
from server.core import keys
from server.core.errors import NotFound
from server.core.values import utc_now
from server.domain.access import may_read_item
from server.domain.articles import CORRECTION, KILL, Article, ChangeKind
from server.domain.delivery import DestinationKind, PartnerStatus
from server.domain.feeds import FeedDefinition, in_feed
from server.domain.partners import Partner
from server.ops.models import (
    DeliveryAttempt,
    DeliveryReport,
    FailedDelivery,
    Lag,
    PartnerHealth,
    PartnerRow,
    PropagationItem,
    PropagationReceipt,
    PropagationReport,
    QueueSummary,
    RetryResult,
    StatusOverview,
)
from server.partners.ledger import STATUS_WINDOW, PollLedger, partner_status, recent_changes
from server.partners.store import PartnerStore
from server.push.destinations import Destination, DestinationStore
from server.push.queue import Claim, PushQueue

BEHIND_AFTER = timedelta(minutes=10)  # an outstanding revision older than this makes a partner "behind"


@dataclass(frozen=True, slots=True)
class OpsContext:
    store: ArticleStore
    partners: PartnerStore
    ledger: PollLedger
    destinations: DestinationStore
    queue: PushQueue
    feeds: dict[str, FeedDefinition]

    @property
    def redis(self) -> Redis:
        return self.store.redis


async def overview(ctx: OpsContext, now: datetime | None = None) -> StatusOverview:
    """``GET /api/status``: one row per partner, plus the queue as a whole."""
    now = now or utc_now()
    partners, _generation = await ctx.partners.load_all()
    attempts = await _recent_attempts(ctx.redis, now - timedelta(hours=1))
    waiting = await ctx.queue.waiting()
    failed = await failed_deliveries(ctx)
    destinations = await ctx.destinations.all()
    rows: list[PartnerRow] = []
    for partner in partners:
        status = await partner_status(partner, ctx.ledger, ctx.store, ctx.feeds, now)
        rows.append(_partner_row(partner, status, attempts, waiting, failed, destinations, now))
    due, in_flight = await ctx.queue.depth()
    oldest = waiting[0][1] if waiting else None
    return StatusOverview(
        generated_at=now,
        partners=tuple(rows),
        queue=QueueSummary(
            depth=len(waiting),
            due=due,
            in_flight=in_flight,
            oldest_pending_seconds=round(now.timestamp() - oldest / 1000, 3) if oldest else None,
            failed=len(failed),
            subscriptions=sum(1 for d in destinations if d.kind == DestinationKind.WEBSUB),
            endpoints=sum(1 for d in destinations if d.kind == DestinationKind.WEBHOOK),
        ),
    )


def _partner_row(partner: Partner, status: PartnerStatus, attempts: list[dict[str, str]],
                 waiting: list[tuple[Claim, float]], failed: list[FailedDelivery], destinations: list[Destination],
                 now: datetime) -> PartnerRow:
    own = {d.id: d for d in destinations if d.partner == partner.name}
    tried = [a for a in attempts if a.get("partner") == partner.name]
    errors = [a for a in tried if a.get("ok") == "0"]
    mine_waiting = [(claim, since) for claim, since in waiting if claim.destination_id in own]
    mine_failed = [f for f in failed if f.partner == partner.name]
    outstanding = [a for a in status.articles if not a.received]
    lag_seconds = max((a.outstanding_seconds or 0 for a in outstanding), default=0)
    failing_ids = sorted({f.destination for f in mine_failed} | {a["destination"] for a in errors})
    if mine_failed or (tried and len(errors) / len(tried) > 0.5):
        state = PartnerHealth.FAILING
    elif any(a.outstanding_seconds and a.outstanding_seconds > BEHIND_AFTER.total_seconds() for a in outstanding):
        state = PartnerHealth.BEHIND
    else:
        state = PartnerHealth.HEALTHY
    oldest = min((since for _claim, since in mine_waiting), default=None)
    return PartnerRow(
        partner=partner.name,
        active=partner.active,
        state=state,
        last_poll=status.last_poll,
        last_push=status.last_push,
        lag=Lag(revisions=sum(a.version - (a.received_version or 0) for a in outstanding),
                seconds=round(lag_seconds, 3)),
        outstanding=len(outstanding),
        error_rate=round(len(errors) / len(tried), 3) if tried else None,
        failing_endpoints=tuple(i for i in failing_ids
                                if own.get(i) is not None and own[i].kind == DestinationKind.WEBHOOK),
        failing_subscriptions=tuple(i for i in failing_ids
                                    if own.get(i) is not None and own[i].kind == DestinationKind.WEBSUB),
        queue_depth=len(mine_waiting),
        oldest_pending_seconds=round(now.timestamp() - oldest / 1000, 3) if oldest else None,
    )


async def propagation(ctx: OpsContext, since: datetime | None = None,
                      now: datetime | None = None) -> PropagationReport:
    """``GET /api/propagation``: every correction and kill ingested since ``since`` (default: the last
    7 days), and for each, which entitled partners have received it (by poll or push) and which not."""
    now = now or utc_now()
    since = since or now - STATUS_WINDOW
    await ctx.ledger.flush()
    changes = await recent_changes(ctx.store, since, kinds=(CORRECTION, KILL))
    partners = [p for p in (await ctx.partners.load_all())[0] if p.active]
    received = {p.name: await ctx.ledger.received(p.name) for p in partners}
    articles = {a.id: a for a in await ctx.store.get_many(list(dict.fromkeys(c.article_id for c in changes)))}
    items: list[PropagationItem] = []
    for change in reversed(changes):  # newest first
        article = articles.get(change.article_id)
        if article is None or not in_feed(article, now, None):
            continue
        entitled = [p for p in partners if may_read_item(p, article.latest, ctx.feeds.values())]
        rows: list[PropagationReceipt] = []
        for partner in entitled:
            got, at = received[partner.name].get(article.id, (0, None))
            done = got >= change.version
            rows.append(PropagationReceipt(
                partner=partner.name,
                received=done,
                received_at=at if done else None,
                received_version=got or None,
                outstanding_seconds=None if done else round((now - change.ingested_at).total_seconds(), 3),
            ))
        rows.sort(key=lambda r: (r.received, r.partner))
        items.append(PropagationItem(
            id=article.id, uri=article.uri, kind=ChangeKind(change.kind), version=change.version,
            ingested_at=change.ingested_at, headline=await _headline(ctx, article),
            partners=tuple(rows), outstanding=sum(1 for r in rows if not r.received),
        ))
    return PropagationReport(since=since, generated_at=now, items=tuple(items),
                             outstanding=sum(item.outstanding for item in items))


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


async def _recent_attempts(redis: Redis, since: datetime) -> list[dict[str, str]]:
    start = f"{int(since.timestamp() * 1000)}-0"
    return [fields for _entry_id, fields in await redis.xrange(keys.push_attempts(), start, "+")]


async def _headline(ctx: OpsContext, article: Article) -> str | None:
    """The story's headline; a kill keeps none, so it is taken from the revision before the kill
    (ops need to know which story it was; none is left after a purge)."""
    revision = article.latest
    if revision.document is not None and not revision.document.get("headlines") and revision.version > 1:
        revision = await ctx.store.revision(article.id, revision.version - 1)
    for headline in (revision.document or {}).get("headlines", []):
        if headline.get("role", "main") == "main":
            return headline.get("value")
    return None
