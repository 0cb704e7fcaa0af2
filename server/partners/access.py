"""Who may read which feed: partner keys checked in memory, rate limits, brute-force throttling, and the
poll ledger line written for every authorised response.

A key is accepted as ``Authorization: Bearer <key>``, as ``X-API-Key`` and as ``?key=`` (for feed
readers that only take a URL). No key on a non-public feed: 401 with ``WWW-Authenticate``; a key that
is malformed, unknown, revoked or expired, or a disabled partner: 401; a valid key for a feed or format
the partner is not entitled to: 403. The admin token reads everything (for ops), without a ledger.
Nothing here makes a Redis round trip on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDictProxy

from server.core import keys
from server.core.errors import Problem, Unauthorised
from server.domain.callers import TokenTable
from server.domain.feeds import FeedDefinition
from server.domain.partners import KeyTable, Partner
from server.observability.logs import note_partner
from server.partners.ledger import PollLedger
from server.partners.ratelimit import FULL, NOT_MODIFIED, Quota, RateLimiter
from server.partners.store import PartnerStore

log = logging.getLogger(__name__)

FAILED_ATTEMPTS_PER_MINUTE = 20
_CHALLENGE = 'Bearer realm="syndicate feeds"'


@dataclass(slots=True)  # not frozen: made on every request, and a frozen init costs three times as much
class Grant:
    """A request allowed in: by whom (None for the public or the admin), with what quota."""

    partner: Partner | None
    key_id: str | None
    quota: Quota | None

    @property
    def variant(self) -> str:
        return self.partner.variant if self.partner else "full"

    @property
    def include_photos(self) -> bool:
        return self.partner.media if self.partner else True


class AccessControl:
    def __init__(self, partners: PartnerStore, tokens: TokenTable, ledger: PollLedger, limiter: RateLimiter,
                 default_rate_limit: int) -> None:
        self.partners = partners
        self.tokens = tokens
        self.ledger = ledger
        self.limiter = limiter
        self.default_rate_limit = default_rate_limit
        self.table = KeyTable()
        self._failures: dict[str, tuple[int, int]] = {}  # client address -> (minute, failures)
        self._failures_minute = 0
        self._reload_lock = asyncio.Lock()

    # ----- keeping the key table current ----------------------------------------------------------

    async def reload(self, force: bool = False) -> None:
        async with self._reload_lock:
            if not force:
                generation = int(await self.partners.redis.get(keys.partners_generation()) or 0)
                if generation <= self.table.generation:
                    return
            partners, generation = await self.partners.load_all()
            if force or generation >= self.table.generation:
                self.table = KeyTable(partners, generation)

    def apply_notice(self, message: str) -> None:
        if int(message) > self.table.generation:
            asyncio.get_running_loop().create_task(self.reload())

    # ----- the request path ---------------------------------------------------------------------

    def authorise(self, request: web.Request, feed: FeedDefinition | None, fmt: str | None,
                  readable: list[FeedDefinition] | None = None) -> Grant:
        """Let a feed request in (``feed``), or an item request (``readable``: the feeds that hold it)."""
        presented = _presented_key(request)
        public = feed.public if feed is not None else any(f.public for f in readable or ())
        if presented is None:
            if public:
                return Grant(None, None, None)
            raise Unauthorised("This feed needs a partner key: 'Authorization: Bearer <key>', 'X-API-Key' or "
                               "'?key='.", headers={"WWW-Authenticate": _CHALLENGE})
        found = self.table.accepted(presented)
        if found is None or self._failures:
            # Not a key this table has accepted before, or some address failed this minute: the admin
            # token, the throttle (a throttled address gets 429 whatever it presents), then the full check.
            caller = self.tokens.lookup(presented)
            if caller is not None and caller.is_admin:
                return Grant(None, None, None)
            address = request.remote or "unknown"
            self._check_not_throttled(address)
            if found is None:
                found = self.table.authenticate(presented)
            if found is None:
                self._count_failure(address)
                raise Unauthorised("The key is not valid (unknown, revoked or expired), or its partner is "
                                   "disabled.", headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})
        partner, key = found
        note_partner(partner.name)  # for the logs: the partner's name, never its key
        if public:
            pass  # open to everyone; the partner's poll is still counted and recorded
        elif feed is not None and not partner.may_read_feed(feed.name):
            raise Problem(f"Partner {partner.name!r} is not entitled to the feed {feed.name!r}.",
                          status=403, slug="not-entitled")
        elif feed is None and not any(partner.may_read_feed(f.name) for f in readable or ()):
            raise Problem(f"Partner {partner.name!r} is not entitled to a feed that holds this item.",
                          status=403, slug="not-entitled")
        if not public and fmt is not None and not partner.may_read_format(fmt):
            raise Problem(f"Partner {partner.name!r} is not entitled to the {fmt} format.", status=403,
                          slug="not-entitled")
        quota = self.limiter.check(partner.name, partner.rate_limit or self.default_rate_limit)
        if not quota.allowed:
            raise Problem(f"Rate limit of {quota.limit} requests a minute reached; try again in "
                          f"{quota.reset_seconds} s.", status=429, slug="rate-limited",
                          headers={"Retry-After": str(quota.reset_seconds), **quota.headers()})
        return Grant(partner, key.key_id, quota)

    def delivered(self, request: web.Request, grant: Grant, response: web.StreamResponse, feed: str,
                  fmt: str | None, render_id: str,
                  manifest: tuple[tuple[str, int], ...] | None = None) -> None:
        """After the response is made: count it against the quota and write its ledger line (in memory)."""
        body = response.body if isinstance(response, web.Response) else None
        quota = self.settle(grant, response.status, response.headers.get("ETag", ""),
                            request.headers.get("If-None-Match", ""), len(body) if isinstance(body, bytes) else 0,
                            feed, fmt, render_id, manifest)
        if quota is not None:
            response.headers["RateLimit-Policy"], response.headers["RateLimit"] = quota.header_values()

    def settle(self, grant: Grant, status: int, etag: str, if_none_match: str, size: int, feed: str,
               fmt: str | None, render_id: str,
               manifest: tuple[tuple[str, int], ...] | None = None) -> Quota | None:
        """Charge an answer to the partner's quota and buffer its ledger line; the quota, for the
        RateLimit headers to send with it (None for the public and the admin: no quota, no ledger)."""
        partner, quota = grant.partner, grant.quota
        if partner is None or quota is None:
            return None
        self.limiter.charge(quota, NOT_MODIFIED if status == 304 else FULL)
        if status == 200 or status == 304:
            if status == 304 and etag not in _etags_in(if_none_match):
                render_id, manifest = "", None  # 304 by date or '*': no proof of which render it holds
            self.ledger.record(partner.name, grant.key_id, feed, fmt or "ninjs", status, size, render_id, manifest)
        return quota

    def remembered_grant(self, presented: str | None, feed: FeedDefinition, fmt: str, address: str) -> Grant | None:
        """The grant :meth:`authorise` would give a feed request presenting ``presented`` (see
        :func:`presented_key`) from ``address``, when it can be told from memory alone and without a
        side effect: no key on a public feed, or a key this table has accepted before, entitled and
        within its quota, from an address not being throttled. None means "ask :meth:`authorise`",
        which also gives every refusal its answer."""
        if address in self._failures and self._throttled(address):
            return None
        if presented is None:
            return Grant(None, None, None) if feed.public else None
        found = self.table.accepted(presented)
        if found is None:
            return None
        partner, key = found
        if not feed.public and not (partner.may_read_feed(feed.name) and partner.may_read_format(fmt)):
            return None
        quota = self.limiter.check(partner.name, partner.rate_limit or self.default_rate_limit)
        return Grant(partner, key.key_id, quota) if quota.allowed else None

    def _throttled(self, address: str) -> bool:
        seen_minute, failures = self._failures.get(address, (0, 0))
        return seen_minute == int(time.time() // 60) and failures >= FAILED_ATTEMPTS_PER_MINUTE

    def _check_not_throttled(self, address: str) -> None:
        minute = int(time.time() // 60)
        # Forget past minutes: with no failures left, authorise skips the full check for remembered keys.
        if minute != self._failures_minute:
            self._failures = {a: v for a, v in self._failures.items() if v[0] == minute}
            self._failures_minute = minute
        seen_minute, failures = self._failures.get(address, (minute, 0))
        if seen_minute == minute and failures >= FAILED_ATTEMPTS_PER_MINUTE:
            raise Problem("Too many failed key attempts from this address; wait a minute.", status=429,
                          slug="too-many-failures", headers={"Retry-After": str(60 - int(time.time()) % 60)})

    def _count_failure(self, address: str) -> None:
        minute = int(time.time() // 60)
        seen_minute, failures = self._failures.get(address, (minute, 0))
        self._failures[address] = (minute, failures + 1 if seen_minute == minute else 1)
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures = {a: v for a, v in self._failures.items() if v[0] == minute}


def _etags_in(if_none_match: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}


def _presented_key(request: web.Request) -> str | None:
    return presented_key(request.headers, request.query.get("key") if request.query_string else None)


def presented_key(headers: CIMultiDictProxy[str], query_key: str | None) -> str | None:
    """The key a request presents (``Authorization: Bearer``, ``X-API-Key`` or ``?key=``), if any."""
    header = headers.get("Authorization")
    if header:
        if header[:7].lower() != "bearer " or not header[7:].strip():
            raise Unauthorised("Only 'Authorization: Bearer <key>' is understood here.",
                               headers={"WWW-Authenticate": _CHALLENGE})
        return header[7:].strip()
    return headers.get("X-API-Key") or query_key or None
