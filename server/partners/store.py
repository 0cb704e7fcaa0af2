"""Partners and their access keys: the records in Redis, and the key table every process keeps in memory.

A partner is an outlet entitled to some feeds in some formats (and to photos, or not). Its keys are 32
random bytes shown once, as ``syn_<key id>_<secret>``; only the key id (a public prefix for telling
keys apart) and a SHA-256 of the whole key are stored. Every change bumps a generation counter and is
announced on pub/sub: each process reloads its :class:`KeyTable` at once, and the process that made
the change applies it before answering, so a revoked key fails on its very next request there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from server.core import keys
from server.core.errors import Conflict, NotFound, Problem
from server.core.replication import ReplicaAcks
from server.core.values import utc_now
from server.domain.feeds import FORMATS
from server.domain.partners import ALL, AccessKey, IssuedKey, Partner, check_name, new_key

# KEYS: record, names, generation. ARGV: record JSON, name. The new generation, or 0 if the name is taken.
_CREATE_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('INCR', KEYS[3])
"""

# KEYS: record, generation, and (a partner enabled again) the reactivated hash. ARGV: the record JSON
# read, the new one, the name. The new generation, or 0 if the record changed since it was read (compare
# and set: the write and its wait share a pipeline, no MULTI).
_REPLACE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
local generation = redis.call('INCR', KEYS[2])
if KEYS[3] then redis.call('HSET', KEYS[3], ARGV[3], generation) end
return generation
"""


class PartnerStore:
    """Partners in Redis: one JSON record per partner, a set of names, and a generation counter."""

    def __init__(self, redis: Redis, feed_names: Iterable[str], acks: ReplicaAcks | None = None) -> None:
        self.redis = redis
        self.feed_names = set(feed_names)
        self.acks = acks or ReplicaAcks(redis, 0, 1.0)  # default: a single Redis, nothing to wait for
        self._create = redis.register_script(_CREATE_LUA)
        self._replace = redis.register_script(_REPLACE_LUA)
        self._loaded: tuple[tuple[Partner, ...], int] | None = None  # the last load_all, and its generation

    async def load_all(self) -> tuple[list[Partner], int]:
        """Every partner and the generation they are of. Every change bumps the generation, so while it
        stands the last load is still true and answers with one ``GET`` (the ops views ask often)."""
        standing = int(await self.redis.get(keys.partners_generation()) or 0)
        if self._loaded is not None and self._loaded[1] == standing:
            return list(self._loaded[0]), standing
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.partners_generation())
            pipe.smembers(keys.partner_names())
            generation, names = await pipe.execute()
        records = await self.redis.mget([keys.partner(n) for n in sorted(names)]) if names else []
        partners = [Partner.from_record(orjson.loads(r)) for r in records if r]
        self._loaded = (tuple(partners), int(generation or 0))
        return partners, int(generation or 0)

    def forget(self) -> None:
        """Drop the last load (the store Redis came back empty or older: its generations mean nothing)."""
        self._loaded = None

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
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._create(keys=[keys.partner(name), keys.partner_names(), keys.partners_generation()],
                               args=[orjson.dumps(partner.to_record()), name], client=pipe)
            [generation] = await self.acks.execute(pipe)
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
        for _attempt in range(20):
            raw = await self.redis.get(record_key)
            if raw is None:
                raise NotFound(f"No partner {name!r}.")
            before = Partner.from_record(orjson.loads(raw))
            partner = change(before)
            # Enabled again: it is owed the corrections and kills dispatched while it was disabled.
            noted = [keys.partners_reactivated()] if partner.active and not before.active else []
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._replace(keys=[record_key, keys.partners_generation(), *noted],
                                    args=[raw, orjson.dumps(partner.to_record()), partner.name], client=pipe)
                [generation] = await self.acks.execute(pipe)
            if generation:
                await self.redis.publish(keys.PARTNERS_CHANNEL, str(generation))
                return partner
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
    if isinstance(value, float) and value.is_integer():  # JSON has one number type: 60.0 is 60
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
        raise Problem("rate_limit is requests per minute, a whole number from 1 to 1000000 (or null).",
                      status=422, errors=[{"pointer": "/rate_limit", "detail": "invalid rate limit"}])
    return value


def _future(moment: datetime | None) -> datetime | None:
    if moment is not None and moment <= utc_now():
        raise Problem("expires_at must be in the future.", status=422,
                      errors=[{"pointer": "/expires_at", "detail": "in the past"}])
    return moment
