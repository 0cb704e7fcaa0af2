"""Push destinations: WebSub subscriptions to a feed topic, and partners' webhook endpoints.

Both are one JSON record each in Redis. A WebSub subscription's id derives from its callback and topic,
so a re-subscription replaces the old one (once it is verified); a webhook endpoint gets a random id.

A subscription's ``topic`` is the feed's URL without any key (the topic's identity, shown by the API);
the topic as the subscriber sent it (``topic_as_sent``, ``?key=`` included), which WebSub wants back in
every denial and content distribution, is kept only in memory and, in the record, sealed
(``sealedTopic``, :mod:`server.core.sealing`): a partner key is never stored in clear.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from server.core import keys
from server.core.errors import NotFound
from server.core.replication import ReplicaAcks
from server.core.sealing import Sealer
from server.core.values import iso, parse_iso, utc_now
from server.domain.delivery import DestinationKind

log = logging.getLogger(__name__)

WEBSUB, WEBHOOK = DestinationKind.WEBSUB.value, DestinationKind.WEBHOOK.value
WEBHOOK_FORMATS = ("newsml", "ninjs", "atom")
# The feed format a partner must be entitled to for each webhook format (ninjs is the JSON one).
WEBHOOK_FEED_FORMATS = {"newsml": "newsml", "ninjs": "json", "atom": "atom"}


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    kind: str  # WEBSUB or WEBHOOK
    url: str  # the callback
    format: str  # websub: the topic's feed format; webhook: newsml, ninjs or atom
    secret: str | None
    partner: str | None  # None: a subscriber to a public feed
    key_id: str | None = None  # websub: the partner key it subscribed with (never the key itself)
    feed: str | None = None  # websub: the topic's feed
    topic: str | None = None  # websub: the topic URL, without any key
    created_at: datetime | None = None
    expires_at: datetime | None = None  # websub: the lease
    # websub: hub.topic exactly as the subscriber sent it, when it is not ``topic`` (it carried ?key=).
    # In memory only; the record holds it sealed. Never shown.
    topic_as_sent: str | None = field(default=None, repr=False)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def echo_topic(self) -> str:
        """The topic to send back to the subscriber (verification, denial, ``Link: rel="self"``): the one
        it sent (WebSub 5.3), else (not known, or no longer openable) the topic without its key."""
        return self.topic_as_sent or self.topic or ""

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "url": self.url, "format": self.format, "secret": self.secret,
                "partner": self.partner, "keyId": self.key_id, "feed": self.feed, "topic": self.topic,
                "createdAt": iso(self.created_at), "expiresAt": iso(self.expires_at)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Destination:
        return cls(record["id"], record["kind"], record["url"], record["format"], record.get("secret"),
                   record.get("partner"), record.get("keyId"), record.get("feed"), record.get("topic"),
                   parse_iso(record.get("createdAt")), parse_iso(record.get("expiresAt")))

    def public_view(self) -> dict[str, Any]:
        record = self.to_record()
        record["secret"] = "set" if self.secret else None
        return record


def subscription_id(callback: str, topic: str) -> str:
    return "ws-" + hashlib.sha256(f"{callback}\n{topic}".encode()).hexdigest()[:20]


def new_webhook(partner: str, url: str, fmt: str, secret: str) -> Destination:
    return Destination(id="wh-" + secrets.token_hex(8), kind=WEBHOOK, url=url, format=fmt, secret=secret,
                       partner=partner, created_at=utc_now())


# KEYS: record, ids. ARGV: record JSON, id. Both at once, without MULTI (its wait follows in the pipeline).
_SAVE_LUA = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""


class DestinationStore:
    def __init__(self, redis: Redis, acks: ReplicaAcks | None = None, sealer: Sealer | None = None) -> None:
        self.redis = redis
        self.acks = acks or ReplicaAcks(redis, 0, 1.0)  # default: a single Redis, nothing to wait for
        self.sealer = sealer  # None: no secret configured, a keyed topic is kept without its key
        self._unopened: set[str] = set()  # subscriptions whose sealed topic did not open (logged once each)
        self._save = redis.register_script(_SAVE_LUA)

    def encode(self, destination: Destination) -> bytes:
        """The record's JSON: the topic as sent only sealed, bound to the destination's id."""
        record = destination.to_record()
        if destination.topic_as_sent and destination.topic_as_sent != destination.topic and self.sealer:
            record["sealedTopic"] = self.sealer.seal(destination.topic_as_sent, destination.id)
        return orjson.dumps(record)

    def decode(self, raw: bytes | str) -> Destination:
        """A record read from Redis, its sealed topic opened (when this process can)."""
        record = orjson.loads(raw)
        destination = Destination.from_record(record)
        sealed = record.get("sealedTopic")
        if sealed:
            opened = self.sealer.open(sealed, destination.id) if self.sealer else None
            if opened is None and destination.id not in self._unopened and len(self._unopened) < 10_000:
                self._unopened.add(destination.id)
                log.warning("subscription %s: its topic as sent cannot be opened (the topic secret changed?); "
                            "its topic without the key is used", destination.id)
            destination = replace(destination, topic_as_sent=opened)
        return destination

    async def save(self, destination: Destination) -> Destination:
        destination = destination if destination.created_at else replace(destination, created_at=utc_now())
        async with self.redis.pipeline(transaction=False) as pipe:  # the write and its wait: one connection
            await self._save(keys=[keys.destination(destination.id), keys.destination_ids()],
                             args=[self.encode(destination), destination.id], client=pipe)
            await self.acks.execute(pipe)
        return destination

    async def get(self, destination_id: str) -> Destination | None:
        raw = await self.redis.get(keys.destination(destination_id))
        return self.decode(raw) if raw else None

    async def all(self) -> list[Destination]:
        ids = sorted(await self.redis.smembers(keys.destination_ids()))
        if not ids:
            return []
        records = await self.redis.mget([keys.destination(i) for i in ids])
        return [self.decode(r) for r in records if r]

    async def for_partner(self, partner: str, kind: str | None = None) -> list[Destination]:
        return [d for d in await self.all() if d.partner == partner and (kind is None or d.kind == kind)]

    async def remove(self, destination_id: str) -> None:
        """Forget a destination, everything waiting to be pushed to it and what it acknowledged."""
        pending = await self.redis.hkeys(keys.push_latest(destination_id))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.destination(destination_id), keys.push_latest(destination_id),
                        keys.push_state(destination_id), keys.push_acked(destination_id))
            pipe.srem(keys.destination_ids(), destination_id)
            if pending:
                members = [f"{destination_id}|{article_id}" for article_id in pending]
                pipe.zrem(keys.push_due(), *members)
                pipe.zrem(keys.push_leased(), *members)
                pipe.zrem(keys.push_waiting_since(), *members)
            await pipe.execute()

    async def require(self, destination_id: str, partner: str | None = None) -> Destination:
        destination = await self.get(destination_id)
        if destination is None or (partner is not None and destination.partner != partner):
            raise NotFound(f"No endpoint {destination_id!r}" + (f" for partner {partner!r}." if partner else "."))
        return destination
