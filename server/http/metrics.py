"""``GET /metrics``: every live process's snapshot merged, and the cluster-wide gauges computed
from Redis at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from server.core import keys
from server.core.values import utc_now
from server.observability.metrics import workers_alive


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics`` (admin token): every live process's metrics, and the cluster-wide gauges."""
    from server.http.auth import require_caller

    require_caller(request, admin=True)
    body = await exposition(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def exposition(app: web.Application) -> bytes:
    from server.http.state import REDIS, SERVICES

    redis = app[REDIS]
    await app[SERVICES].heartbeat.beat()  # this process's own snapshot, fresh
    snapshots = await _live_snapshots(redis)
    gauges = await cluster_gauges(app)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(_merge(snapshots) + gauges))
    return generate_latest(registry)


async def _live_snapshots(redis: Any) -> dict[str, list]:
    now = int(time.time() * 1000)
    process_ids = sorted(await redis.zrangebyscore(keys.process_metrics_index(), now, "+inf"))
    if not process_ids:
        return {}
    raw = await redis.mget([keys.process_metrics(p) for p in process_ids])
    return {p: orjson.loads(r) for p, r in zip(process_ids, raw, strict=True) if r}


def _merge(snapshots: dict[str, list]) -> list[Metric]:
    families: dict[str, Metric] = {}
    for process_id, snapshot in snapshots.items():
        for name, kind, documentation, samples in snapshot:
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(name, documentation, kind)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, {"process": process_id, **labels}, value)
    return list(families.values())


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def cluster_gauges(app: web.Application) -> list[Metric]:
    """The gauges every process computes alike from Redis, at scrape time."""
    from server.domain.delivery import DestinationKind
    from server.http.state import DESTINATIONS, OPS, PUSH_QUEUE, REDIS
    from server.ops.views import outstanding_gauges

    redis, queue = app[REDIS], app[PUSH_QUEUE]
    now = utc_now()
    due, in_flight = await queue.depth()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.push_waiting_since())
        pipe.zrange(keys.push_waiting_since(), 0, 0, withscores=True)
        pipe.hlen(keys.push_failed())
        pending, oldest, failed = await pipe.execute()
    depth = GaugeMetricFamily("syndicate_push_queue_depth", "Deliveries due or waiting to retry (due), and "
                              "being attempted (in_flight).", labels=("state",))
    depth.add_metric(("due",), due)
    depth.add_metric(("in_flight",), in_flight)
    oldest_age = max(0.0, now.timestamp() - oldest[0][1] / 1000) if oldest else 0.0
    destinations = [d for d in await app[DESTINATIONS].all() if not d.expired(now)]
    gauges = await outstanding_gauges(app[OPS], now)
    outstanding = GaugeMetricFamily("syndicate_outstanding_revisions", "Corrections and kills (of the last 7 "
                                    "days) an entitled partner has not received, by poll or push (no series: "
                                    "none).", labels=("partner", "kind"))
    outstanding_age = GaugeMetricFamily("syndicate_outstanding_oldest_seconds", "How long the oldest "
                                        "correction or kill a partner has not received has been outstanding "
                                        "(no series: none).", labels=("partner", "kind"))
    for gauge in gauges:
        outstanding.add_metric((gauge.partner, gauge.kind.value), gauge.count)
        outstanding_age.add_metric((gauge.partner, gauge.kind.value), gauge.oldest_seconds)
    return [
        depth,
        GaugeMetricFamily("syndicate_push_pending_deliveries", "Deliveries not yet acknowledged (due, retrying "
                          "or in flight).", value=pending),
        GaugeMetricFamily("syndicate_push_oldest_pending_seconds", "Age of the oldest unacknowledged delivery "
                          "(0: none).", value=round(oldest_age, 3)),
        GaugeMetricFamily("syndicate_push_failed_deliveries", "Deliveries given up on, kept for a retry.",
                          value=failed),
        GaugeMetricFamily("syndicate_websub_subscriptions", "Active (verified, unexpired) WebSub "
                          "subscriptions.", value=sum(1 for d in destinations if d.kind == DestinationKind.WEBSUB)),
        GaugeMetricFamily("syndicate_webhook_endpoints", "Partners' webhook endpoints.",
                          value=sum(1 for d in destinations if d.kind == DestinationKind.WEBHOOK)),
        outstanding,
        outstanding_age,
        GaugeMetricFamily("syndicate_workers_alive", "Processes whose push workers have a live heartbeat.",
                          value=await workers_alive(redis)),
    ]
