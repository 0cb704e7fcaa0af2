"""Prometheus metrics (``GET /metrics``, admin token) and the processes' heartbeats in Redis.

Two kinds of metric:

* **Process-local** counters and histograms (HTTP requests, feed cache results, render time, 304s,
  push deliveries and their latency, Redis errors), kept by each process in its own
  ``CollectorRegistry`` (one per app, never the global one).
* **Cluster-wide** gauges computed from Redis when scraped (queue depth, oldest pending delivery,
  subscriptions, outstanding corrections and kills per partner, workers alive). Every process gives
  the same values, so they carry no process label.

Several processes: every process (``syndicate serve`` and ``syndicate worker`` alike) publishes a
snapshot of its process-local metrics to Redis every heartbeat (``SYNDICATE_HEARTBEAT_SECONDS``; the
snapshot lives for three heartbeats), and ``/metrics`` on any process answers with the snapshots of
every live process, each series labelled ``process="<host>:<pid>"``. So one scrape target (any
process, or the load balancer in front of them) sees the whole deployment, push workers without an
HTTP port included, and ``sum without (process)`` gives totals. Counters never go backwards between
scrapes that land on different processes, because every answer is read from the same snapshots (the
answering process refreshes its own first).

The heartbeat: each process running push workers also sets ``syn:heartbeat:worker:<host>:<pid>``
with the same time to live while its worker loops run; ``/readyz`` counts them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from server.core import keys
from server.core.values import utc_now

log = logging.getLogger(__name__)

HEARTBEAT_LIVES = 3  # a heartbeat or snapshot outlives this many intervals
RENDER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
                    21600.0, 86400.0)
CACHE_RESULTS = ("memory_hit", "redis_hit", "render")
DELIVERY_OUTCOMES = ("ok", "retry", "gave_up", "gone")
REDIS_ERROR_PLACES = ("http", "push", "embargo", "maintenance", "flush", "heartbeat")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


_live_process_ids: set[str] = set()


def new_process_id() -> str:
    """``<host>:<pid>``; a second app alive in the same process (tests) gets ``<host>:<pid>:2`` and so on."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    candidate, n = base, 1
    while candidate in _live_process_ids:
        n += 1
        candidate = f"{base}:{n}"
    _live_process_ids.add(candidate)
    return candidate


def release_process_id(process_id: str) -> None:
    _live_process_ids.discard(process_id)


class Metrics:
    """One app's process-local metrics, in a registry of its own."""

    def __init__(self, process_id: str | None = None) -> None:
        # ``<host>:<pid>``; made unique among the apps alive in this process when the app starts.
        self.process_id = process_id or f"{socket.gethostname()}:{os.getpid()}"
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The request metrics are counted in plain numbers (this is every request's path) and become
        # Prometheus families only when collected.
        self.http = _RequestCounts()
        r.register(self.http)
        self.render_seconds = Histogram("syndicate_feed_render_seconds", "Time to build a feed page on a cache "
                                        "miss (choose the articles, render, compress), by format.", ("format",),
                                        buckets=RENDER_BUCKETS, registry=r)
        self.deliveries = Counter("syndicate_push_deliveries", "Push delivery attempts by outcome: ok "
                                  "(acknowledged), retry (will be retried), gave_up (kept as failed), gone "
                                  "(WebSub 410: subscription ended).", ("kind", "outcome"), registry=r)
        self.delivery_latency = Histogram("syndicate_push_delivery_latency_seconds", "From the revision's "
                                          "ingest (publish) to the receiver's acknowledgement.", ("kind",),
                                          buckets=DELIVERY_BUCKETS, registry=r)
        self.redis_errors = Counter("syndicate_redis_errors", "Redis errors caught and logged, by where.",
                                    ("where",), registry=r)
        self.connections_refused = Counter("syndicate_connections_refused", "Connections refused past a cap, by "
                                           "reason (over-address, over-process, dropped).", ("reason",), registry=r)
        self.job_restarts = Counter("syndicate_job_restarts", "Background jobs restarted after they crashed or "
                                    "ended early, by job.", ("job",), registry=r)
        self.pubsub_subscriptions = Counter("syndicate_pubsub_subscriptions", "Pub/sub subscriptions made: 1 at "
                                            "start, one more after each lost connection or moved primary.",
                                            registry=r)
        self.pubsub_notices = Counter("syndicate_pubsub_notices", "Pub/sub notices received, by channel.",
                                      ("channel",), registry=r)
        # Present from the start (at 0), so rate() and increase() see the first increment.
        for kind in ("webhook", "websub"):
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(kind=kind, outcome=outcome).inc(0)
        for where in REDIS_ERROR_PLACES:
            self.redis_errors.labels(where=where).inc(0)

    # ----- recording (all cheap: no I/O) ----------------------------------------------------------

    def cache_result(self, result: str) -> None:
        self.http.cache_results[result] += 1

    def rendering(self, fmt: str):
        """``with metrics.rendering(fmt):`` around a render: counts it and times it."""
        self.http.cache_results["render"] += 1
        return self.render_seconds.labels(format=fmt).time()

    def delivered(self, kind: str, outcome: str, ingested_at: datetime | None = None) -> None:
        self.deliveries.labels(kind=kind, outcome=outcome).inc()
        if ingested_at is not None:
            self.delivery_latency.labels(kind=kind).observe(max(0.0, (utc_now() - ingested_at).total_seconds()))

    def delivery_error(self, kind: str = "unknown") -> None:
        """An attempt failed inside the server (it is retried); counts a Redis error when it was one."""
        self.delivered(kind, "retry")
        self.count_redis_error("push")

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason=reason).inc()

    def job_restarted(self, job: str) -> None:
        self.job_restarts.labels(job=job).inc()

    def subscribed(self, channels: Iterable[str]) -> None:
        """A pub/sub subscription was made (again) to ``channels``."""
        self.pubsub_subscriptions.inc()
        for channel in channels:
            self.pubsub_notices.labels(channel=channel).inc(0)

    def notice_received(self, channel: str) -> None:
        self.pubsub_notices.labels(channel=channel).inc()

    def count_redis_error(self, where: str) -> None:
        """Call in an ``except`` block: counts the exception being handled if it is a Redis error."""
        exc: BaseException | None = sys.exception()
        for _depth in range(5):
            if exc is None:
                return
            if isinstance(exc, RedisError):
                self.redis_errors.labels(where=where).inc()
                return
            exc = exc.__cause__ or exc.__context__

    # ----- snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """This process's metrics as JSON: ``[[family, type, help, [[sample, labels, value], ...]], ...]``."""
        families = []
        for family in self.registry.collect():
            samples = [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]
            families.append([family.name, family.type, family.documentation, samples])
        return orjson.dumps(families)


# ----- request counts ---------------------------------------------------------------------------------


class _RouteCounts:
    __slots__ = ("buckets", "seconds", "cacheable", "not_modified")

    def __init__(self) -> None:
        self.buckets = [0] * (len(HTTP_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0
        self.cacheable = 0
        self.not_modified = 0


class _RequestCounts:
    """The metrics every request touches, as plain counts, and the collector that presents them to
    Prometheus: ``syndicate_http_requests_total``, ``syndicate_http_request_duration_seconds``,
    ``syndicate_http_cacheable_responses_total``, ``syndicate_http_not_modified_total``,
    ``syndicate_feed_cache_requests_total`` and ``syndicate_http_fast_path_answers_total``."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.routes: dict[str, _RouteCounts] = {}
        self.cache_results = dict.fromkeys(CACHE_RESULTS, 0)
        self.fast_answers = 0  # of the requests above, those answered by server.http.fast_path

    def observe(self, method: str, route: str, status: int, seconds: float, has_etag: bool) -> None:
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.routes.get(route)
        if counts is None:
            counts = self.routes[route] = _RouteCounts()
        counts.buckets[bisect_left(HTTP_BUCKETS, seconds)] += 1  # bounds are inclusive ("le")
        counts.seconds += seconds
        if has_etag and method in ("GET", "HEAD") and status in (200, 304):
            counts.cacheable += 1
            if status == 304:
                counts.not_modified += 1

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily("syndicate_http_requests", "HTTP requests answered, by route template, "
                                       "method and status.", labels=("method", "route", "status"))
        for (method, route, status), count in list(self.requests.items()):
            requests.add_metric((method, route, str(status)), count)
        duration = HistogramMetricFamily("syndicate_http_request_duration_seconds", "Time to answer a request "
                                         "(until the response is handed to the server), by route template.",
                                         labels=("route",))
        cacheable = CounterMetricFamily("syndicate_http_cacheable_responses", "GET and HEAD responses carrying "
                                        "an ETag (200 or 304): the denominator of the 304 ratio.", labels=("route",))
        not_modified = CounterMetricFamily("syndicate_http_not_modified", "304 Not Modified responses.",
                                           labels=("route",))
        for route, counts in list(self.routes.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*HTTP_BUCKETS, math.inf), counts.buckets, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            duration.add_metric((route,), buckets, counts.seconds)
            cacheable.add_metric((route,), counts.cacheable)
            not_modified.add_metric((route,), counts.not_modified)
        cache = CounterMetricFamily("syndicate_feed_cache_requests", "Feed page lookups: memory_hit (this "
                                    "process's memory), redis_hit (rendered by any process, read from Redis) or "
                                    "render (built here).", labels=("result",))
        for result, count in self.cache_results.items():
            cache.add_metric((result,), count)
        fast = CounterMetricFamily("syndicate_http_fast_path_answers", "Cached feed polls answered from memory "
                                   "beneath aiohttp's request handling (server.http.fast_path); the rest of the "
                                   "requests went through their route.", value=self.fast_answers)
        return [requests, duration, cacheable, not_modified, cache, fast]


# ----- heartbeats and snapshots in Redis ---------------------------------------------------------------


async def workers_alive(redis: Any) -> int:
    """How many processes' push workers have a live heartbeat."""
    return int(await redis.zcount(keys.worker_heartbeats(), int(time.time() * 1000), "+inf"))


# ----- the scrape ----------------------------------------------------------------------------------------


