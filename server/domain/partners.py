"""Partners and their access keys as values, and the in-memory key table every process checks keys
against (no Redis: :mod:`server.partners.store` loads and saves them)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.core.errors import Problem
from server.core.values import iso, parse_iso, utc_now

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
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


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
