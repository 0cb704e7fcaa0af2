"""The access policy (:mod:`server.domain.access`) applied on the request path: partner keys and the
bearer tokens checked in memory, rate limits, the failed-key throttle (:mod:`server.partners.throttle`),
and the poll ledger line written for every authorised response.

A key is accepted as ``Authorization: Bearer <key>``, as ``X-API-Key`` and as ``?key=`` (for feed
readers that only take a URL). No key on a non-public feed: 401 with ``WWW-Authenticate``; a key that
is malformed, unknown, revoked or expired, or a disabled partner: 401; a valid key for a feed or format
the partner is not entitled to: 403. The admin token reads everything (for ops), without a ledger.
Nothing here makes a Redis round trip on the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import CIMultiDictProxy

from server.core import keys
from server.core.errors import NotFound, Problem, Unauthorised
from server.core.values import utc_now
from server.domain.access import Refusal, feed_refusal, item_refusal
from server.domain.articles import Article, Revision
from server.domain.callers import Caller, TokenTable
from server.domain.feeds import FeedDefinition
from server.domain.partners import AccessKey, KeyTable, Partner, parse_key_id
from server.domain.propagation import Delivery, requirement
from server.observability.logs import note_partner
from server.partners.ledger import PollLedger
from server.partners.ratelimit import FULL, NOT_MODIFIED, Quota, RateLimiter
from server.partners.store import PartnerStore
from server.partners.throttle import FailedKeyThrottle

log = logging.getLogger(__name__)

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


class _Admin:
    """The admin token presented where a partner key is expected: ops read everything, without a ledger."""


ADMIN_READER: Final = _Admin()
ANONYMOUS: Final = (None, None)
Reader = tuple[Partner | None, AccessKey | None] | _Admin
"""Who reads: a partner and its key, :data:`ANONYMOUS` (``(None, None)``), or :data:`ADMIN_READER`."""


class AccessControl:
    def __init__(self, partners: PartnerStore, tokens: TokenTable, ledger: PollLedger, limiter: RateLimiter,
                 default_rate_limit: int, throttle: FailedKeyThrottle) -> None:
        self.partners = partners
        self.tokens = tokens
        self.ledger = ledger
        self.limiter = limiter
        self.default_rate_limit = default_rate_limit
        self.throttle = throttle
        self.table = KeyTable()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()

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

    async def caught_up(self) -> bool:
        """Reload the key table if the partners moved on in Redis (one ``GET``); whether it did."""
        before = self.table.generation
        await self.reload()
        return self.table.generation != before

    def apply_notice(self, message: str) -> None:
        if int(message) > self.table.generation:
            task = asyncio.get_running_loop().create_task(self.reload())
            self._reloads.add(task)  # kept until done: the loop holds only a weak reference
            task.add_done_callback(self._reloads.discard)

    # ----- the request path ---------------------------------------------------------------------

    def feed_grant(self, presented: str | None, feed: FeedDefinition, fmt: str, address: str, *,
                   from_memory: bool = False) -> Grant | None:
        """The one access decision on a feed poll presenting ``presented`` (see :func:`presented_key`)
        from ``address``: a :class:`Grant`, or the refusal raised (401, 403, 429) as the access policy says.

        With ``from_memory`` (the fast path) it takes the same steps without a side effect and refuses
        nothing: a grant that memory alone can give (no key on a public feed; a key this table has accepted
        before, entitled and within its quota), else None, and the
        request is then decided again without ``from_memory``, which makes the refusal or does the full
        check (the admin token, a key not yet accepted, counting a failed key)."""
        if presented is None:
            if not feed.public:
                if from_memory:
                    return None
                raise Unauthorised("This feed needs a partner key: 'Authorization: Bearer <key>', 'X-API-Key' or "
                                   "'?key='.", headers={"WWW-Authenticate": _CHALLENGE})
            reader: Reader = ANONYMOUS
        elif from_memory:
            found = self.table.accepted(presented)
            if found is None:
                return None
            reader = found
        else:
            reader = self.check_key(presented, address)
        if reader is ADMIN_READER:
            return Grant(None, None, None)
        partner, key = reader
        refusal = feed_refusal(partner, feed, fmt)
        if refusal is not None:
            if from_memory:
                return None
            raise _refused(refusal, partner, f"the feed {feed.name!r}", fmt)
        if partner is None or key is None:
            return Grant(None, None, None)  # anonymous, on a public feed: no quota, no ledger
        quota = self.limiter.check(partner.name, partner.rate_limit or self.default_rate_limit)
        if not quota.allowed:
            if from_memory:
                return None
            raise _rate_limited(quota)
        return Grant(partner, key.key_id, quota)

    def authorise_item(self, reader: Reader, revision: Revision | None, feeds: Iterable[FeedDefinition],
                       fmt: str) -> Grant:
        """Let an item request in at ``revision`` (identified first with :meth:`identify`), or refuse it:
        404 when no feed the reader may read holds that revision (or it is withheld), else 401/403/429."""
        if reader is ADMIN_READER:
            return Grant(None, None, None)
        partner, key = reader
        refusal = item_refusal(partner, revision, feeds, fmt, utc_now())
        if refusal is not None:
            raise _refused(refusal, partner, "a feed that holds this item", fmt)
        return self._within_quota(partner, key)

    async def authorise_latest_item(self, reader: Reader, article: Article, feeds: Iterable[FeedDefinition],
                                    fmt: str) -> tuple[Grant, Delivery]:
        """Let an item request for the article's latest revision in, and say what it is sent: the
        revision, or (the propagation rule) for a partner that had the story but may no longer read it,
        the kill or withdrawal notice instead of the refusal. Only a refusal asks Redis anything."""
        feeds = tuple(feeds)
        try:
            grant = self.authorise_item(reader, article.latest, feeds, fmt)
        except Problem as refused:
            if reader is ADMIN_READER or refused.status not in (403, 404):
                raise
            partner, key = reader
            if partner is None or key is None:
                raise
            sent = requirement(partner, article.latest, feeds,
                               await self.ledger.has_received(partner.name, article.id))
            if sent is None or sent is Delivery.CONTENT:
                raise  # never had it, or may read it in another format: the refusal stands
            return self._within_quota(partner, key), sent
        return grant, Delivery.KILL if article.killed else Delivery.CONTENT

    def authorise_self(self, request: web.Request, address: str) -> Grant:
        """Let a partner's request about itself in (``/api/me/...``): its own key only (the admin token
        is not a partner: 403), the same key checks and throttle as feeds, and its rate limit (429)."""
        reader = self.identify(request, address, open_to_anonymous=False)
        if reader is ADMIN_READER:
            raise Problem("This is a partner's own view: present the partner's key, not the admin token.",
                          status=403, slug="not-a-partner")
        partner, key = reader
        if partner is None or key is None:  # unreachable: no key is 401 above
            raise Unauthorised("A partner key is needed.", headers={"WWW-Authenticate": _CHALLENGE})
        return self._within_quota(partner, key)

    def charged(self, grant: Grant, response: web.StreamResponse) -> None:
        """Count an answer about the partner itself against its quota, like a feed's (no ledger line:
        it delivered no article)."""
        if grant.quota is None:
            return
        self.limiter.charge(grant.quota, FULL)
        response.headers["RateLimit-Policy"], response.headers["RateLimit"] = grant.quota.header_values()

    def identify(self, request: web.Request, address: str, open_to_anonymous: bool) -> Reader:
        """Who is reading from ``address``: the admin, a partner and its key, or (when ``open_to_anonymous``) nobody.
        401 for a missing or bad key, 429 for an address being throttled; see :meth:`check_key`."""
        presented = _presented_key(request)
        if presented is None:
            if open_to_anonymous:
                return ANONYMOUS
            raise Unauthorised("This feed needs a partner key: 'Authorization: Bearer <key>', 'X-API-Key' or "
                               "'?key='.", headers={"WWW-Authenticate": _CHALLENGE})
        return self.check_key(presented, address)

    def check_key(self, presented: str, address: str) -> Reader:
        """The admin, or the partner and key that ``presented`` belongs to; else 401, or 429 once the
        failed-key throttle says so (:mod:`server.partners.throttle`: a valid partner key is never
        refused). Every way in that takes a partner key (feeds, items, ``/api/me``, the WebSub hub)
        goes through here."""
        found = self.table.accepted(presented) or self.table.authenticate(presented)
        if found is None:
            key_id = parse_key_id(presented)
            if key_id is None:  # not a key's form: the admin token, or a failed token
                wait = self.throttle.token_wait(address)
                if wait is not None:
                    raise _too_many_failures(wait)
                caller = self.tokens.lookup(presented)
                if caller is not None and caller.is_admin:
                    return ADMIN_READER
                if caller is None:
                    self.throttle.token_failed(address)
            else:
                wait = self.throttle.key_failed(address, key_id)
                if wait is not None:
                    raise _too_many_failures(wait)
            raise Unauthorised("The key is not valid (unknown, revoked or expired), or its partner is "
                               "disabled.", headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})
        note_partner(found[0].name)  # for the logs: the partner's name, never its key
        return found

    def check_token(self, presented: str, address: str, challenge: str) -> Caller:
        """The admin or publisher whose bearer token ``presented`` is; 401 (``WWW-Authenticate:
        <challenge>``) and counted if none, 429 without comparing while ``address`` is throttled for
        tokens (:mod:`server.partners.throttle`). For the ``/api`` tokens, the dashboard's login, and the
        admin token where a partner key is expected."""
        wait = self.throttle.token_wait(address)
        if wait is not None:
            raise _too_many_failures(wait)
        caller = self.tokens.lookup(presented)
        if caller is None:
            self.throttle.token_failed(address)
            raise Unauthorised("The bearer token is not valid.",
                               headers={"WWW-Authenticate": f'{challenge}, error="invalid_token"'})
        return caller

    def _within_quota(self, partner: Partner | None, key: AccessKey | None) -> Grant:
        if partner is None or key is None:
            return Grant(None, None, None)  # anonymous, on a public feed: no quota, no ledger
        quota = self.limiter.check(partner.name, partner.rate_limit or self.default_rate_limit)
        if not quota.allowed:
            raise _rate_limited(quota)
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
               manifest: tuple[tuple[str, int], ...] | None = None, since: int | None = None) -> Quota | None:
        """Charge an answer to the partner's quota and buffer its ledger line; the quota, for the
        RateLimit headers to send with it (None for the public and the admin: no quota, no ledger)."""
        partner, quota = grant.partner, grant.quota
        if partner is None or quota is None:
            return None
        self.limiter.charge(quota, NOT_MODIFIED if status == 304 else FULL)
        if status == 200 or status == 304:
            if status == 304 and etag not in _etags_in(if_none_match):
                render_id, manifest = "", None  # 304 by date or '*': no proof of which render it holds
            self.ledger.record(partner.name, grant.key_id, feed, fmt or "ninjs", status, size, render_id, manifest,
                               since=since)
        return quota



def _too_many_failures(wait: int) -> Problem:
    return Problem(f"Too many failed keys or tokens from this address or for this key; try again in {wait} s.",
                   status=429, slug="too-many-failures", headers={"Retry-After": str(wait)})


def _rate_limited(quota: Quota) -> Problem:
    return Problem(f"Rate limit of {quota.limit} requests a minute reached; try again in {quota.reset_seconds} s.",
                   status=429, slug="rate-limited", headers={"Retry-After": str(quota.reset_seconds), **quota.headers()})


def _refused(refusal: Refusal, partner: Partner | None, what: str, fmt: str | None) -> Problem:
    """The answer to a refusal of the access policy."""
    if refusal is Refusal.NOT_HELD:
        return NotFound("No such item in a feed you may read.")
    if refusal is Refusal.NEEDS_KEY:
        return Unauthorised(f"Reading {what} needs a partner key: 'Authorization: Bearer <key>', 'X-API-Key' "
                            "or '?key='.", headers={"WWW-Authenticate": _CHALLENGE})
    if refusal is Refusal.INACTIVE:
        return Unauthorised("The partner is disabled.", headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})
    name = partner.name if partner else "?"
    if refusal is Refusal.FORMAT:
        return Problem(f"Partner {name!r} is not entitled to the {fmt} format.", status=403, slug="not-entitled")
    return Problem(f"Partner {name!r} is not entitled to {what}.", status=403, slug="not-entitled")


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
