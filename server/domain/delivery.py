"""Read models of delivery to partners, pure (no Redis): the kinds of push destination, and a partner's
status (``GET /api/partners/{name}/status``): its polls, and which recent revisions it has received.

:func:`server.partners.ledger.partner_status` builds a :class:`PartnerStatus`; the ops overview reads
it. Each model's ``to_json`` is the exact JSON of the API (``schemas/openapi.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from server.core.values import iso
from server.domain.articles import ChangeKind, PubStatus
from server.domain.propagation import Delivery


class DestinationKind(StrEnum):
    """Where push delivers: a WebSub subscription's callback, or a partner's webhook endpoint."""

    WEBSUB = "websub"
    WEBHOOK = "webhook"


class ReceiptState(StrEnum):
    """Whether a partner has received a revision (by poll or acknowledged push)."""

    RECEIVED = "received"
    OUTSTANDING = "outstanding"


@dataclass(frozen=True, slots=True)
class PollSummary:
    """A partner's authorised feed and item responses in the last hour."""

    polls: int
    not_modified: int
    not_modified_ratio: float | None  # None without polls

    def to_json(self) -> dict[str, Any]:
        return {"polls": self.polls, "notModified": self.not_modified, "notModifiedRatio": self.not_modified_ratio}


@dataclass(frozen=True, slots=True)
class ArticleReceipt:
    """One article the partner must receive (by the propagation rule) from the status window: has it
    received the required version?"""

    id: str
    uri: str
    version: int  # the version it must receive (the latest it is due)
    kind: ChangeKind  # of that revision
    pub_status: PubStatus
    received: bool
    received_version: int | None
    received_at: datetime | None  # None unless received
    outstanding_since: datetime | None  # None when received
    outstanding_seconds: float | None
    delivery: Delivery = Delivery.CONTENT  # what it is sent: the revision, or the kill or withdrawal notice

    @property
    def state(self) -> ReceiptState:
        return ReceiptState.RECEIVED if self.received else ReceiptState.OUTSTANDING

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uri": self.uri,
            "version": self.version,
            "kind": self.kind.value,
            "pubStatus": self.pub_status.value,
            "received": self.received,
            "receivedVersion": self.received_version,
            "receivedAt": iso(self.received_at),
            "outstandingSince": iso(self.outstanding_since),
            "outstandingSeconds": self.outstanding_seconds,
            "delivery": self.delivery.value,
        }


@dataclass(frozen=True, slots=True)
class PartnerStatus:
    """A partner's last poll and push, its last hour of polls, and its receipts (outstanding first)."""

    partner: str
    active: bool
    last_poll: datetime | None
    last_push: datetime | None
    last_hour: PollSummary
    articles: tuple[ArticleReceipt, ...]
    outstanding: int  # articles not received

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "active": self.active,
            "lastPoll": iso(self.last_poll),
            "lastPush": iso(self.last_push),
            "lastHour": self.last_hour.to_json(),
            "articles": [article.to_json() for article in self.articles],
            "outstanding": self.outstanding,
        }
