"""Partners and their access keys: the records in Redis, and the key table every process keeps in memory.

A partner is an outlet entitled to some feeds in some formats (and to photos, or not). Its keys are 32
random bytes shown once, as ``syn_<key id>_<secret>``; only the key id (a public prefix for telling
keys apart) and a SHA-256 of the whole key are stored. Every change bumps a generation counter and is
announced on pub/sub: each process reloads its :class:`KeyTable` at once, and the process that made
the change applies it before answering, so a revoked key fails on its very next request there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from server import keys
from server.feeds import FORMATS
from server.models import iso, parse_iso, utc_now
from server.problems import Conflict, NotFound, Problem

ALL = "*"
KEY_PREFIX = "syn_"
ACCEPTED_KEYS_REMEMBERED = 10_000  # per key table
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY = re.compile(r"^syn_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class AccessKey:
    key_id: str
    digest: str  # hex SHA-256 of the whole key
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_record(self) -> dict[str, Any]:
        return {"keyId": self.key_id, "digest": self.digest, "createdAt": iso(self.created_at),
                "expiresAt": iso(self.expires_at), "revokedAt": iso(self.revoked_at)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AccessKey:
        return cls(record["keyId"], record["digest"], parse_iso(record["createdAt"]),
                   parse_iso(record.get("expiresAt")), parse_iso(record.get("revokedAt")))


@dataclass(frozen=True, slots=True)
class Partner:
    name: str
    feeds: tuple[str, ...]  # feed names, or ("*",) for every feed
    formats: tuple[str, ...]  # of server.feeds.FORMATS, or ("*",)
    media: bool = True  # photo rights: without them, feeds come without the photos
    active: bool = True
    contact: str | None = None
    notes: str | None = None
    rate_limit: int | None = None  # requests per minute; None: the server's default
    created_at: datetime = field(default_factory=utc_now)
    keys: tuple[AccessKey, ...] = ()

    def may_read_feed(self, feed_name: str) -> bool:
        return ALL in self.feeds or feed_name in self.feeds

    def may_read_format(self, fmt: str) -> bool:
        return ALL in self.formats or fmt in self.formats

    @property
    def variant(self) -> str:
        """Which cached render this partner gets: the same bytes as every partner with the same rights."""
        return "full" if self.media else "no-media"

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name, "feeds": list(self.feeds), "formats": list(self.formats), "media": self.media,
            "active": self.active, "contact": self.contact, "notes": self.notes, "rateLimit": self.rate_limit,
            "createdAt": iso(self.created_at), "keys": [k.to_record() for k in self.keys],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Partner:
        return cls(
            name=record["name"], feeds=tuple(record["feeds"]), formats=tuple(record["formats"]),
            media=record["media"], active=record["active"], contact=record.get("contact"),
            notes=record.get("notes"), rate_limit=record.get("rateLimit"),
            created_at=parse_iso(record["createdAt"]),
            keys=tuple(AccessKey.from_record(k) for k in record.get("keys", [])))

    def public_view(self) -> dict[str, Any]:
        """What the admin API shows: everything but the key digests."""
        record = self.to_record()
        record["keys"] = [{k: v for k, v in key.to_record().items() if k != "digest"} for key in self.keys]
        return record


@dataclass(frozen=True, slots=True)
class IssuedKey:
    partner: Partner
    key: str  # shown once
    key_id: str


def new_key() -> tuple[str, str, str]:
    """(key, key id, digest) for 32 fresh random bytes."""
    key_id = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"{KEY_PREFIX}{key_id}_{secret}"
    return key, key_id, key_digest(key)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def parse_key_id(presented: str) -> str | None:
    match = _KEY.match(presented)
    return match.group(1) if match else None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise Problem("A partner name is 1-64 characters: lowercase letters, digits, '.', '_' and '-', "
                      "starting with a letter or digit.", status=422,
                      errors=[{"pointer": "/name", "detail": "invalid partner name"}])
    return name


class KeyTable:
    """Every partner and key in process memory: the hot path checks keys without touching Redis.

    A table is never changed, only replaced (on every change of any partner), so what it remembers is
    as current as the table: keys it has accepted are remembered by their text, and the next request
    with the same key costs one dictionary lookup instead of a SHA-256 and a comparison. (A dict looks
    a string up by its SipHash, keyed with a secret of this process, so its timing tells an attacker
    nothing about a key it holds; a key that was never accepted always takes the full, constant-time
    path.)"""

    def __init__(self, partners: Iterable[Partner] = (), generation: int = 0) -> None:
        self.generation = generation
        self.partners: dict[str, Partner] = {}
        self._by_key_id: dict[str, tuple[AccessKey, str]] = {}
        self._accepted: dict[str, tuple[Partner, AccessKey, float]] = {}  # key -> (..., usable until)
        for partner in partners:
            self._put(partner)

    def _put(self, partner: Partner) -> None:
        old = self.partners.get(partner.name)
        if old is not None:
            for key in old.keys:
                self._by_key_id.pop(key.key_id, None)
        self.partners[partner.name] = partner
        for key in partner.keys:
            self._by_key_id[key.key_id] = (key, partner.name)
        self._accepted.clear()

    def accepted(self, presented: str, now: datetime | None = None) -> tuple[Partner, AccessKey] | None:
        """The partner and key if this table has accepted ``presented`` before and it is still usable;
        None says nothing (use :meth:`authenticate`)."""
        accepted = self._accepted.get(presented)
        if accepted is not None:
            partner, key, usable_until = accepted
            if (time.time() if now is None else now.timestamp()) < usable_until:
                return partner, key
        return None

    def authenticate(self, presented: str, now: datetime | None = None) -> tuple[Partner, AccessKey] | None:
        """The partner and key, if ``presented`` is a usable key of an active partner."""
        if presented in self._accepted:
            return self.accepted(presented, now)
        key_id = parse_key_id(presented)
        found = self._by_key_id.get(key_id) if key_id else None
        if found is None:
            # Compare anyway, so that an unknown key id takes as long as a wrong secret.
            hmac.compare_digest(key_digest(presented), "0" * 64)
            return None
        key, partner_name = found
        if not hmac.compare_digest(key_digest(presented), key.digest):
            return None
        partner = self.partners[partner_name]
        if not partner.active or not key.usable(now or utc_now()):
            return None
        if len(self._accepted) < ACCEPTED_KEYS_REMEMBERED:
            self._accepted[presented] = (partner, key, key.expires_at.timestamp() if key.expires_at else math.inf)
        return partner, key


# KEYS: record, names, generation. ARGV: record JSON, name. The new generation, or 0 if the name is taken.
_CREATE_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('INCR', KEYS[3])
"""


class PartnerStore:
    """Partners in Redis: one JSON record per partner, a set of names, and a generation counter."""

    def __init__(self, redis: Redis, feed_names: Iterable[str]) -> None:
        self.redis = redis
        self.feed_names = set(feed_names)

    async def load_all(self) -> tuple[list[Partner], int]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.partners_generation())
            pipe.smembers(keys.partner_names())
            generation, names = await pipe.execute()
        records = await self.redis.mget([keys.partner(n) for n in sorted(names)]) if names else []
        return [Partner.from_record(orjson.loads(r)) for r in records if r], int(generation or 0)

    async def get(self, name: str) -> Partner:
        raw = await self.redis.get(keys.partner(check_name(name)))
        if raw is None:
            raise NotFound(f"No partner {name!r}.")
        return Partner.from_record(orjson.loads(raw))

    async def create(self, name: str, feeds: list[str], formats: list[str], *, media: bool = True,
                     contact: str | None = None, notes: str | None = None, rate_limit: int | None = None,
                     expires_at: datetime | None = None) -> IssuedKey:
        check_name(name)
        key, key_id, digest = new_key()
        partner = Partner(name=name, feeds=self._feeds(feeds), formats=_formats(formats), media=media,
                          contact=contact, notes=notes, rate_limit=_rate_limit(rate_limit),
                          keys=(AccessKey(key_id, digest, utc_now(), _future(expires_at)),))
        generation = await self.redis.eval(_CREATE_LUA, 3, keys.partner(name), keys.partner_names(),
                                           keys.partners_generation(), orjson.dumps(partner.to_record()), name)
        if not generation:
            raise Conflict(f"A partner named {name!r} exists already.", slug="partner-exists")
        await self.redis.publish(keys.PARTNERS_CHANNEL, str(generation))
        return IssuedKey(partner, key, key_id)

    async def update(self, name: str, **changes: Any) -> Partner:
        """Change entitlements, contact, notes, rate limit or the active flag."""
        def change(partner: Partner) -> Partner:
            values = dict(changes)
            if "feeds" in values:
                values["feeds"] = self._feeds(values["feeds"])
            if "formats" in values:
                values["formats"] = _formats(values["formats"])
            if "rate_limit" in values:
                values["rate_limit"] = _rate_limit(values["rate_limit"])
            return replace(partner, **values)

        return await self._modify(name, change)

    async def issue_key(self, name: str, expires_at: datetime | None = None) -> IssuedKey:
        key, key_id, digest = new_key()
        expiry = _future(expires_at)
        partner = await self._modify(name, lambda p: replace(
            p, keys=(*p.keys, AccessKey(key_id, digest, utc_now(), expiry))))
        return IssuedKey(partner, key, key_id)

    async def revoke_key(self, name: str, key_id: str) -> Partner:
        def revoke(partner: Partner) -> Partner:
            if not any(k.key_id == key_id for k in partner.keys):
                raise NotFound(f"Partner {name!r} has no key {key_id!r}.")
            now = utc_now()
            return replace(partner, keys=tuple(replace(k, revoked_at=k.revoked_at or now) if k.key_id == key_id
                                               else k for k in partner.keys))
        return await self._modify(name, revoke)

    async def _modify(self, name: str, change: Any) -> Partner:
        record_key = keys.partner(check_name(name))
        async with self.redis.pipeline(transaction=True) as pipe:
            for _attempt in range(20):
                try:
                    await pipe.watch(record_key)
                    raw = await pipe.get(record_key)
                    if raw is None:
                        raise NotFound(f"No partner {name!r}.")
                    partner = change(Partner.from_record(orjson.loads(raw)))
                    pipe.multi()
                    pipe.set(record_key, orjson.dumps(partner.to_record()))
                    pipe.incr(keys.partners_generation())
                    results = await pipe.execute()
                    await self.redis.publish(keys.PARTNERS_CHANNEL, str(results[-1]))
                    return partner
                except WatchError:
                    continue
        raise Conflict(f"Partner {name!r} is being changed by someone else; try again.")

    def _feeds(self, feeds: Any) -> tuple[str, ...]:
        if not isinstance(feeds, list) or not feeds or not all(isinstance(f, str) for f in feeds):
            raise Problem("feeds must be a non-empty list of feed names (or [\"*\"]).", status=422,
                          errors=[{"pointer": "/feeds", "detail": "must be a non-empty list of strings"}])
        unknown = sorted(set(feeds) - self.feed_names - {ALL})
        if unknown:
            raise Problem(f"No feed {unknown[0]!r}; the feeds are {', '.join(sorted(self.feed_names))}.",
                          status=422, errors=[{"pointer": "/feeds", "detail": f"unknown feed {unknown[0]!r}"}])
        return tuple(dict.fromkeys(feeds))


def _formats(formats: Any) -> tuple[str, ...]:
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        raise Problem("formats must be a non-empty list of formats (or [\"*\"]).", status=422,
                      errors=[{"pointer": "/formats", "detail": "must be a non-empty list of strings"}])
    unknown = sorted(set(formats) - set(FORMATS) - {ALL})
    if unknown:
        raise Problem(f"No format {unknown[0]!r}; the formats are {', '.join(FORMATS)}.", status=422,
                      errors=[{"pointer": "/formats", "detail": f"unknown format {unknown[0]!r}"}])
    return tuple(dict.fromkeys(formats))


def _rate_limit(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
        raise Problem("rate_limit is requests per minute, a whole number from 1 to 1000000 (or null).",
                      status=422, errors=[{"pointer": "/rate_limit", "detail": "invalid rate limit"}])
    return value


def _future(moment: datetime | None) -> datetime | None:
    if moment is not None and moment <= utc_now():
        raise Problem("expires_at must be in the future.", status=422,
                      errors=[{"pointer": "/expires_at", "detail": "in the past"}])
    return moment
