"""The typed read models of the ops views (:mod:`server.ops.views`), pure (no Redis, no aiohttp).

The API answers each one's ``to_json()``, which is exactly the JSON that ``schemas/openapi.yaml``
describes; the CLI, the dashboard's templates and ``/metrics`` read their attributes. Times the views
compute are datetimes (``to_json`` writes them in RFC 3339); the attempts and failures read back from
the push queue keep their times as the text stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from server.core.values import iso
from server.domain.articles import ChangeKind
from server.domain.delivery import ArticleReceipt, DestinationKind, ReceiptState
from server.domain.propagation import Delivery


class PartnerHealth(StrEnum):
    """A partner's delivery health in the overview (the rules are in ``views._partner_row``)."""

    HEALTHY = "healthy"
    BEHIND = "behind"
    FAILING = "failing"


class DeliveryFilter(StrEnum):
    """``GET /api/deliveries?status=``: only failed attempts, or all of them."""

    FAILED = "failed"
    ALL = "all"


# --- GET /api/status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lag:
    """How far what a partner has received is behind what it is entitled to."""

    revisions: int  # the oldest outstanding article's missing revisions, plus one per other outstanding article
    seconds: float  # the longest-outstanding revision's wait; 0 when none

    def to_json(self) -> dict[str, Any]:
        return {"revisions": self.revisions, "seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class PartnerRow:
    """One partner's row of the overview."""

    partner: str
    active: bool
    state: PartnerHealth
    last_poll: datetime | None
    last_push: datetime | None
    lag: Lag
    outstanding: int
    error_rate: float | None  # None without attempts in the last hour
    failing_endpoints: tuple[str, ...]
    failing_subscriptions: tuple[str, ...]
    queue_depth: int
    oldest_pending_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "active": self.active,
            "state": self.state.value,
            "lastPoll": iso(self.last_poll),
            "lastPush": iso(self.last_push),
            "lag": self.lag.to_json(),
            "outstanding": self.outstanding,
            "errorRate": self.error_rate,
            "failingEndpoints": list(self.failing_endpoints),
            "failingSubscriptions": list(self.failing_subscriptions),
            "queueDepth": self.queue_depth,
            "oldestPendingSeconds": self.oldest_pending_seconds,
        }


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """The push queue as a whole."""

    depth: int  # not yet acknowledged
    due: int
    in_flight: int
    oldest_pending_seconds: float | None
    failed: int  # given up on
    subscriptions: int
    endpoints: int

    def to_json(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "due": self.due,
            "inFlight": self.in_flight,
            "oldestPendingSeconds": self.oldest_pending_seconds,
            "failed": self.failed,
            "subscriptions": self.subscriptions,
            "endpoints": self.endpoints,
        }


@dataclass(frozen=True, slots=True)
class StatusOverview:
    """``GET /api/status``: every partner's row, and the queue."""

    generated_at: datetime
    partners: tuple[PartnerRow, ...]
    queue: QueueSummary

    def count(self, state: PartnerHealth) -> int:
        return sum(1 for row in self.partners if row.state == state)

    def to_json(self) -> dict[str, Any]:
        return {
            "generatedAt": iso(self.generated_at),
            "partners": [row.to_json() for row in self.partners],
            "queue": self.queue.to_json(),
        }


# --- GET /api/propagation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PropagationReceipt:
    """Whether one entitled partner has received a correction or kill."""

    partner: str
    received: bool
    received_at: datetime | None  # None unless received
    received_version: int | None
    outstanding_seconds: float | None  # None when received
    delivery: Delivery = Delivery.CONTENT  # what it is sent: the revision, or the kill or withdrawal notice

    @property
    def state(self) -> ReceiptState:
        return ReceiptState.RECEIVED if self.received else ReceiptState.OUTSTANDING

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "received": self.received,
            "receivedAt": iso(self.received_at),
            "receivedVersion": self.received_version,
            "outstandingSeconds": self.outstanding_seconds,
            "delivery": self.delivery.value,
        }


@dataclass(frozen=True, slots=True)
class PropagationItem:
    """One correction or kill, and who has received it."""

    id: str
    uri: str
    kind: ChangeKind
    version: int  # the version the change made
    ingested_at: datetime
    headline: str | None
    partners: tuple[PropagationReceipt, ...]  # not received first, then by name; one page of them
    outstanding: int
    required: int = 0  # partners that must receive it (all of them, however many are listed)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uri": self.uri,
            "kind": self.kind.value,
            "version": self.version,
            "ingestedAt": iso(self.ingested_at),
            "headline": self.headline,
            "partners": [row.to_json() for row in self.partners],
            "outstanding": self.outstanding,
            "required": self.required,
        }


@dataclass(frozen=True, slots=True)
class PropagationReport:
    """``GET /api/propagation``: the corrections and kills since ``since``, newest first."""

    since: datetime  # "from" in JSON
    generated_at: datetime
    items: tuple[PropagationItem, ...]  # one page
    outstanding: int  # (partner, change) pairs not received, over the whole window
    total_items: int = 0  # corrections and kills in the window, however many are listed
    outstanding_items: int = 0  # of which not yet received by every partner that must receive them

    def to_json(self) -> dict[str, Any]:
        return {
            "from": iso(self.since),
            "generatedAt": iso(self.generated_at),
            "items": [item.to_json() for item in self.items],
            "outstanding": self.outstanding,
            "totalItems": self.total_items,
            "outstandingItems": self.outstanding_items,
        }


# --- GET /api/deliveries and the retry ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One delivery attempt, as the push worker recorded it in ``syn:push:attempts``."""

    at: str  # as stored
    destination: str
    kind: DestinationKind
    partner: str  # "" for a subscription to a public feed made without a key
    article: str
    version: int
    attempt: int
    status: int | None  # None: no HTTP answer
    ok: bool
    latency_ms: float
    error: str
    delivery: str

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> DeliveryAttempt:
        """From the stream entry's fields (all text)."""
        return cls(
            at=fields.get("at", ""),
            destination=fields.get("destination", ""),
            kind=DestinationKind(fields["kind"]),
            partner=fields.get("partner", ""),
            article=fields.get("article", ""),
            version=int(fields.get("version") or 0),
            attempt=int(fields.get("attempt") or 0),
            status=int(fields.get("status") or 0) or None,
            ok=fields.get("ok") == "1",
            latency_ms=float(fields.get("latencyMs") or 0),
            error=fields.get("error", ""),
            delivery=fields.get("delivery", ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {  # in the order the worker writes the fields
            "at": self.at,
            "destination": self.destination,
            "kind": self.kind.value,
            "partner": self.partner,
            "article": self.article,
            "version": self.version,
            "attempt": self.attempt,
            "status": self.status,
            "ok": self.ok,
            "latencyMs": self.latency_ms,
            "error": self.error,
            "delivery": self.delivery,
        }


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery given up on, as kept in ``syn:push:failed`` for a retry."""

    delivery: str
    kind: DestinationKind
    destination: str
    partner: str | None  # None for a subscription to a public feed made without a key
    url: str
    article: str
    version: int
    attempts: int
    first_attempt_at: str  # as stored
    last_attempt_at: str
    last_status: int | None
    last_error: str | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FailedDelivery:
        """From the JSON record the push worker stored."""
        return cls(
            delivery=record["delivery"],
            kind=DestinationKind(record["kind"]),
            destination=record["destination"],
            partner=record.get("partner"),
            url=record["url"],
            article=record["article"],
            version=record["version"],
            attempts=record["attempts"],
            first_attempt_at=record["firstAttemptAt"],
            last_attempt_at=record["lastAttemptAt"],
            last_status=record.get("lastStatus"),
            last_error=record.get("lastError"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "delivery": self.delivery,
            "kind": self.kind.value,
            "destination": self.destination,
            "partner": self.partner,
            "url": self.url,
            "article": self.article,
            "version": self.version,
            "attempts": self.attempts,
            "firstAttemptAt": self.first_attempt_at,
            "lastAttemptAt": self.last_attempt_at,
            "lastStatus": self.last_status,
            "lastError": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """``GET /api/deliveries``: recent attempts (newest first) and the deliveries given up on."""

    attempts: tuple[DeliveryAttempt, ...]
    failed: tuple[FailedDelivery, ...]  # most recent last attempt first

    def to_json(self) -> dict[str, Any]:
        return {"attempts": [a.to_json() for a in self.attempts], "failed": [f.to_json() for f in self.failed]}


@dataclass(frozen=True, slots=True)
class RetryResult:
    """``POST /api/deliveries/{id}/retry``: the delivery queued again, with the article's newest version."""

    delivery: str
    destination: str
    article: str
    version: int
    requeued: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"delivery": self.delivery, "destination": self.destination, "article": self.article,
                "version": self.version, "requeued": self.requeued}


@dataclass(frozen=True, slots=True)
class FailedDestination:
    """The failed deliveries of one destination, grouped (the dashboard's rows, one "retry all" each)."""

    destination: str
    kind: DestinationKind
    partner: str | None
    url: str
    count: int
    first_failure_at: str  # as stored: the earliest first attempt of the group
    last_failure_at: str  # the latest last attempt
    last_status: int | None  # of the most recent failure
    last_error: str | None

    @classmethod
    def group(cls, failures: list[FailedDelivery]) -> list[FailedDestination]:
        """One row per destination, the most recently failing first."""
        by_destination: dict[str, list[FailedDelivery]] = {}
        for failure in failures:
            by_destination.setdefault(failure.destination, []).append(failure)
        rows = []
        for destination, group in by_destination.items():
            latest = max(group, key=lambda f: f.last_attempt_at or "")
            rows.append(cls(destination=destination, kind=latest.kind, partner=latest.partner, url=latest.url,
                            count=len(group), first_failure_at=min(f.first_attempt_at or "" for f in group),
                            last_failure_at=latest.last_attempt_at, last_status=latest.last_status,
                            last_error=latest.last_error))
        return sorted(rows, key=lambda r: r.last_failure_at or "", reverse=True)

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "kind": self.kind.value, "partner": self.partner, "url": self.url,
                "count": self.count, "firstFailureAt": self.first_failure_at, "lastFailureAt": self.last_failure_at,
                "lastStatus": self.last_status, "lastError": self.last_error}


@dataclass(frozen=True, slots=True)
class RetryAllResult:
    """``POST /api/destinations/{id}/retry``: every failed delivery of the destination queued again."""

    destination: str
    requeued: tuple[RetryResult, ...]

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "requeued": len(self.requeued),
                "deliveries": [r.to_json() for r in self.requeued]}


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice of a long list is shown."""

    offset: int
    limit: int
    total: int

    @property
    def has_next(self) -> bool:
        return self.offset + self.limit < self.total

    @property
    def has_previous(self) -> bool:
        return self.offset > 0

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "limit": self.limit, "total": self.total}


# --- GET /api/me/status ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Missed:
    """One revision a partner must receive and has not: what it is sent, and where to fetch it."""

    receipt: ArticleReceipt
    item_url: str
    newsml_url: str

    def to_json(self) -> dict[str, Any]:
        return {**self.receipt.to_json(), "links": {"item": self.item_url, "newsml": self.newsml_url}}


@dataclass(frozen=True, slots=True)
class Contact:
    """One of a partner's recent polls or pushes, from its ledger."""

    at: datetime
    channel: str  # a feed name, "item:<id>" or "push:<destination>"
    format: str
    status: int
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "channel": self.channel, "format": self.format, "status": self.status,
                "count": self.count}


@dataclass(frozen=True, slots=True)
class MyStatus:
    """``GET /api/me/status``: what the calling partner has missed, oldest first, and its last contacts."""

    partner: str
    generated_at: datetime
    outstanding: int  # all of them; ``missed`` is one page
    missed: tuple[Missed, ...]
    page: Page
    last_poll: datetime | None
    last_push: datetime | None
    polls: tuple[Contact, ...]  # newest first
    pushes: tuple[Contact, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "generatedAt": iso(self.generated_at),
            "outstanding": self.outstanding,
            "missed": [m.to_json() for m in self.missed],
            "page": self.page.to_json(),
            "lastPoll": iso(self.last_poll),
            "lastPush": iso(self.last_push),
            "polls": [c.to_json() for c in self.polls],
            "pushes": [c.to_json() for c in self.pushes],
        }


@dataclass(frozen=True, slots=True)
class OutstandingGauge:
    """``/metrics``: one active partner's corrections or kills of the window not yet received (at least one)."""

    partner: str
    kind: ChangeKind
    count: int
    oldest_seconds: float
