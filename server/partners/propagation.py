"""Who must receive what, kept incrementally in Redis: per partner the required versions and the
outstanding articles, and per correction or kill who must receive it and who has not yet.

The push dispatcher calls :meth:`Requirements.require` once per change it consumes (it already holds
the partner table and the feeds): the rule (:mod:`server.domain.propagation`) is decided in Python,
except "did the partner have the story", which the Lua script reads from the partner's receipts in the
same atomic step as it writes the requirement. So a receipt (which removes the article from
``partner_outstanding`` in its own Lua step when it reaches the required version) can never be
overtaken by a requirement written from a stale read.

The ops views read these summaries (``ZCARD``, ``ZRANGE`` with limits, one Lua step per page of
items) instead of rescanning the change log: :meth:`summaries`, :meth:`outstanding_page`,
:meth:`items`, :meth:`settle`. :meth:`trim` keeps them to the status window.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from server.articles.store import ArticleStore
from server.core import keys
from server.core.values import parse_iso, utc_now
from server.domain.articles import EMBARGO_LIFT, KILL, Article, ChangeKind, PubStatus
from server.domain.delivery import ArticleReceipt, PartnerStatus, PollSummary
from server.domain.feeds import FeedDefinition, in_feed
from server.domain.partners import Partner
from server.domain.propagation import (
    ITEM_KINDS,
    TRACKED_KINDS,
    Delivery,
    if_may_read_or_had,
    main_headline,
    requirement,
)
from server.partners.ledger import PUSH_PREFIX, PollLedger

CATCH_UP_LIMIT = 2000  # change-log entries a view records at most before answering
STATUS_ARTICLES = 500  # a partner's status lists at most this many articles
TRIM_BATCH = 500  # quiet articles dropped from every partner's requirements per pipeline
SETTLE_BATCH = 20_000  # noted receipts settled per Lua step (a read settles one batch; the retention job all)
SUMMARY_LAG_SCAN = 1  # lag revisions are summed over this many oldest outstanding articles (1 each beyond)
INDEX_STEP_PAIRS = 2_000  # (partner, item) pairs a reconciling Lua step copies or checks (then it yields)

# KEYS 1 items, 2 item hash, 3 item partners, 4 item pending, 5 the article's items; then per partner:
# received, required, outstanding. ARGV 1 article, 2 version, 3 ingest ms, 4 "1" for a correction or
# kill, 5 kind, 6 uri, 7 headline, 8-9 the parts of a partner's pending items key (around its name;
# the kind follows); then per partner: name, the delivery it must receive whatever its receipts say (it
# may read the revision now, or has it on its way; "" if not), the delivery if it only had the story.
# Returns name, delivery, ... of every partner that must receive it.
_REQUIRE_LUA = """
local article, version, since = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local item = ARGV[4] == '1'
local member = article .. '|' .. ARGV[2]
if item then
  redis.call('ZADD', KEYS[1], since, member)
  redis.call('HSET', KEYS[2], 'kind', ARGV[5], 'uri', ARGV[6], 'headline', ARGV[7], 'ingestedAt', since)
  redis.call('SADD', KEYS[5], ARGV[2])
end
local result = {}
for i = 0, (#KEYS - 5) / 3 - 1 do
  local name, sent = ARGV[10 + 3 * i], ARGV[11 + 3 * i]
  local got = redis.call('HGET', KEYS[6 + 3 * i], article)
  if sent == '' and got then sent = ARGV[12 + 3 * i] end
  if sent ~= '' then
    if tonumber(redis.call('HGET', KEYS[7 + 3 * i], article) or '0') < version then
      redis.call('HSET', KEYS[7 + 3 * i], article, version)
    end
    if (got and tonumber(string.match(got, '^(%d+)')) or 0) < version then
      redis.call('ZADD', KEYS[8 + 3 * i], 'NX', since, article)
      if item then
        redis.call('SADD', KEYS[4], name)
        redis.call('ZADD', ARGV[8] .. name .. ARGV[9] .. ARGV[5], since, member)
      end
    end
    if item then redis.call('HSET', KEYS[3], name, sent) end
    result[#result + 1] = name
    result[#result + 1] = sent
  end
end
return result
"""

# Settling: the receipts noted since the last settling (``to settle``: ``<received key>|<article>``) drop
# their partner from the pending set of every item of the article at or below the version received,
# and the item from the partner's pending items. KEYS 1: to settle. ARGV 1, 2: the received key's
# prefix and suffix, 3, 4: the article items key's, 5, 6: the pending key's (around
# ``<article>:<version>``; without the suffix, the item's hash), 7, 8: the partner's pending items
# key's (around its name; the kind follows).
_SETTLE_FUNCTION = """
local function settle_receipts()
  local noted = redis.call('SPOP', KEYS[1], SETTLE_BATCH)
  for _, entry in ipairs(noted) do
    local received, article = string.match(entry, '^(.*)|([^|]*)$')
    local name = string.sub(received, #ARGV[1] + 1, #received - #ARGV[2])
    local got = redis.call('HGET', received, article)
    local have = got and tonumber(string.match(got, '^(%d+)')) or 0
    for _, version in ipairs(redis.call('SMEMBERS', ARGV[3] .. article .. ARGV[4])) do
      if tonumber(version) <= have then
        local item = ARGV[5] .. article .. ':' .. version
        if redis.call('SREM', item .. ARGV[6], name) == 1 then
          local kind = redis.call('HGET', item, 'kind')
          if kind then redis.call('ZREM', ARGV[7] .. name .. ARGV[8] .. kind, article .. '|' .. version) end
        end
      end
    end
  end
  return redis.call('SCARD', KEYS[1])
end
""".replace("SETTLE_BATCH", str(SETTLE_BATCH))

# KEYS 1: to settle, 2: the items. ARGV 1-8: as the settling's, 9: since (epoch ms), 10: "1" to return
# the names still pending. Settles, then returns per item of the window, newest first, {member, ingest
# ms, count, kind, names...}: the item keys are built here, and counting is a SCARD, whatever the number
# of pending pairs (the read's cost is the window's items, passed neither way as key names).
_WINDOW_LUA = _SETTLE_FUNCTION + """
settle_receipts()
local entries = redis.call('ZRANGE', KEYS[2], '+inf', ARGV[9], 'BYSCORE', 'REV', 'WITHSCORES')
local result = {}
for i = 1, #entries, 2 do
  local member = entries[i]
  local article, version = string.match(member, '^(.*)|([^|]*)$')
  local pending = ARGV[5] .. article .. ':' .. version .. ARGV[6]
  local kind = redis.call('HGET', string.sub(pending, 1, #pending - #ARGV[6]), 'kind') or ''
  local answer = {member, entries[i + 1], 0, kind}
  if ARGV[10] == '1' then
    for _, name in ipairs(redis.call('SMEMBERS', pending)) do answer[#answer + 1] = name end
    answer[3] = #answer - 4
  else
    answer[3] = redis.call('SCARD', pending)
  end
  result[#result + 1] = answer
end
return result
"""

# KEYS 1: to settle. ARGV 1-8: as the settling's. Settles one batch only, and returns how many are left
# (the retention job drains the set this way even when no ops view is read).
_SETTLE_ONLY_LUA = _SETTLE_FUNCTION + """
return settle_receipts()
"""

_LUA_ITEM_KINDS = "{" + ", ".join(f"'{kind}'" for kind in ITEM_KINDS) + "}"  # a Lua table of the item kinds

# KEYS 1: to settle. ARGV 1-8: as the settling's, 9: since (epoch ms), then the partners' names.
# Settles, then returns per (partner, kind) with anything pending since ``since`` {name, kind, count,
# oldest ingest ms}: two reads of each partner's pending items per kind, whatever the window holds.
_PER_PARTNER_LUA = _SETTLE_FUNCTION + """
settle_receipts()
local result = {}
for i = 10, #ARGV do
  for _, kind in ipairs(ITEM_KINDS) do
    local pending = ARGV[7] .. ARGV[i] .. ARGV[8] .. kind
    local count = redis.call('ZCOUNT', pending, ARGV[9], '+inf')
    if count > 0 then
      local oldest = redis.call('ZRANGE', pending, ARGV[9], '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
      result[#result + 1] = {ARGV[i], kind, count, oldest[2]}
    end
  end
end
return result
""".replace("ITEM_KINDS", _LUA_ITEM_KINDS)

# Reconciling the partners' pending items with the items' pending sets (each maintenance run: they
# are written in the same steps, but a process of an older version, or a Redis restored from an older
# copy, writes or keeps one without the other). Adding: KEYS 1: the items. ARGV 1, 2: the pending key's
# parts, 3, 4: the partner's pending items key's, 5: at most this many pairs per step, then members of
# the items. Adds each item's pending partners to their pending items, an item at a time, until the
# pairs are spent; returns how many items it did (the caller goes on from there).
_INDEX_LUA = """
local done, pairs = 0, 0
for i = 6, #ARGV do
  if pairs >= tonumber(ARGV[5]) then break end
  local article, version = string.match(ARGV[i], '^(.*)|([^|]*)$')
  local item = ARGV[1] .. article .. ':' .. version
  local kind = redis.call('HGET', item, 'kind')
  local since = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if kind and since then
    for _, name in ipairs(redis.call('SMEMBERS', item .. ARGV[2])) do
      redis.call('ZADD', ARGV[3] .. name .. ARGV[4] .. kind, since, ARGV[i])
      pairs = pairs + 1
    end
  end
  done = done + 1
end
return done
"""

# Removing: ARGV 1, 2: the pending key's parts, 3, 4: the partner's pending items key's, 5: at most
# this many pairs per step, then names. Drops every member of the partners' pending items whose item no
# longer holds the partner pending (settled or trimmed by a process that did not touch the index), a
# partner at a time until the pairs are spent; returns {partners done, members dropped}.
_UNINDEX_LUA = """
local done, checked, dropped = 0, 0, 0
for i = 6, #ARGV do
  if checked >= tonumber(ARGV[5]) then break end
  for _, kind in ipairs(ITEM_KINDS) do
    local index = ARGV[3] .. ARGV[i] .. ARGV[4] .. kind
    for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
      local article, version = string.match(member, '^(.*)|([^|]*)$')
      if redis.call('SISMEMBER', ARGV[1] .. article .. ':' .. version .. ARGV[2], ARGV[i]) == 0 then
        redis.call('ZREM', index, member)
        dropped = dropped + 1
      end
      checked = checked + 1
    end
  end
  done = done + 1
end
return {done, dropped}
""".replace("ITEM_KINDS", _LUA_ITEM_KINDS)

# ARGV 1, 2: the parts of a partner's received hash around its name; then pairs of a partner's name and
# an article id. Returns each pair's receipt (false: none): thousands of HGETs in one step, not one
# pipelined command each.
_RECEIPTS_LUA = """
local result = {}
for i = 3, #ARGV - 1, 2 do
  result[#result + 1] = redis.call('HGET', ARGV[1] .. ARGV[i] .. ARGV[2], ARGV[i + 1])
end
return result
"""

# ARGV 1: how many oldest to sum the lag over; 2-7: the parts of the partner's outstanding set,
# required hash and received hash around its name; then the names (keys built here: 1,000 partners
# are 1,000 short arguments, not 3,000 key names). Returns per partner {count, oldest ms or false, lag
# revisions}: one step for them all.
_SUMMARY_LUA = """
local result = {}
for i = 0, #ARGV - 8 do
  local name = ARGV[i + 8]
  local outstanding = ARGV[2] .. name .. ARGV[3]
  local required, received = ARGV[4] .. name .. ARGV[5], ARGV[6] .. name .. ARGV[7]
  local count = redis.call('ZCARD', outstanding)
  if count == 0 then
    result[i + 1] = {0, false, 0}
  else
    local oldest = redis.call('ZRANGE', outstanding, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
    local lag = 0
    for j = 1, #oldest, 2 do
      local owed = tonumber(redis.call('HGET', required, oldest[j]) or '0')
      local got = redis.call('HGET', received, oldest[j])
      local have = got and tonumber(string.match(got, '^(%d+)')) or 0
      lag = lag + math.max(owed - have, 1)
    end
    result[i + 1] = {count, oldest[2], lag + (count - #oldest / 2)}
  end
end
return result
"""


# KEYS 1: the catch-up cursor. ARGV 1: a change number. Raises the cursor to it (never lowers it).
_ADVANCE_LUA = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Summary:
    """One partner's outstanding revisions, from the summaries."""

    outstanding: int
    oldest_since: datetime | None
    lag_revisions: int


@dataclass(frozen=True, slots=True)
class Owed:
    """One article a partner must receive (and perhaps has)."""

    article_id: str
    required: int
    received: int  # 0: none
    received_at: datetime | None
    outstanding_since: datetime | None  # None: received


@dataclass(frozen=True, slots=True)
class Settled:
    """A correction or kill of the window and how many partners have not yet received it."""

    article_id: str
    version: int
    kind: str
    ingested_at: datetime
    outstanding: int
    pending: tuple[str, ...] = ()  # who, when asked for


@dataclass(frozen=True, slots=True)
class Item:
    """One correction or kill of the window, with its counts."""

    article_id: str
    version: int
    kind: str
    uri: str
    headline: str | None
    ingested_at: datetime
    required: int
    outstanding: int


_SETTLE_PARTS = (*keys.PARTNER_RECEIVED_PARTS, *keys.PROPAGATION_ARTICLE_ITEMS_PARTS, *keys.PROPAGATION_PENDING_PARTS,
                 *keys.PARTNER_PENDING_ITEMS_PARTS)


def _ms(value: float | str) -> datetime:
    return datetime.fromtimestamp(float(value) / 1000, tz=UTC)


def _receipt(raw: str | None) -> tuple[int, datetime | None]:
    if not raw:
        return 0, None
    version, _, millis = raw.partition("|")
    return int(version), _ms(millis) if millis else None


class Requirements:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._require = redis.register_script(_REQUIRE_LUA)
        self._window = redis.register_script(_WINDOW_LUA)
        self._settle_only = redis.register_script(_SETTLE_ONLY_LUA)
        self._per_partner = redis.register_script(_PER_PARTNER_LUA)
        self._index = redis.register_script(_INDEX_LUA)
        self._unindex = redis.register_script(_UNINDEX_LUA)
        self._receipts = redis.register_script(_RECEIPTS_LUA)
        self._summary = redis.register_script(_SUMMARY_LUA)
        self._advance = redis.register_script(_ADVANCE_LUA)

    # ----- writing ------------------------------------------------------------------------------

    async def record(self, store: ArticleStore, article: Article, partners: Iterable[Partner],
                     feeds: Iterable[FeedDefinition], awaiting: frozenset[str] = frozenset()) -> dict[str, Delivery]:
        """:meth:`require`, with the story's headline for ops (a kill keeps none: the revision's before it)."""
        if article.latest.kind not in TRACKED_KINDS:
            return {}
        document = article.latest.document
        if article.latest.kind == KILL and article.version > 1:
            document = (await store.revision(article.id, article.version - 1)).document
        return await self.require(article, partners, feeds, main_headline(document), awaiting)

    async def catch_up(self, store: ArticleStore, partners: Callable[[], Awaitable[Iterable[Partner]]],
                       feeds: Iterable[FeedDefinition], settle: timedelta = timedelta(0),
                       limit: int = CATCH_UP_LIMIT) -> int:
        """Record the requirements of the changes no dispatcher has taken yet (no worker is running, or
        they are behind), so the summaries the ops views read never lag the change log by more than what
        is being dispatched. Recording is idempotent, so a dispatcher doing the same later is harmless."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(keys.changelog())
            pipe.get(keys.propagation_caught_up())
            try:
                groups, caught_up = await pipe.execute()
            except ResponseError:
                return 0  # no change log yet
        group = next((g for g in groups if g.get("name") == keys.DISPATCH_GROUP), None)
        done = 0  # every change up to here has been recorded by a dispatcher
        if group is not None:
            done = int(str(group.get("last-delivered-id") or "0-0").partition("-")[0] or 0)
            if group.get("pending"):  # taken but not yet acknowledged (being judged): not done yet
                pending = await self.redis.xpending(keys.changelog(), keys.DISPATCH_GROUP)
                if pending.get("min"):  # none left: acknowledged since XINFO looked
                    done = min(done, int(str(pending["min"]).partition("-")[0]) - 1)
        start = max(done, int(caught_up or 0))
        entries = await self.redis.xrange(keys.changelog(), f"({start}-0", "+", count=limit)
        if not entries:
            return 0
        # Judged only once every receipt of what was served before them is in Redis.
        wait = (settle - (utc_now() - parse_iso(entries[-1][1]["at"]))).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        now = utc_now()
        everyone, feeds = tuple(await partners()), tuple(feeds)  # read only when there is something to record
        judged = [(fields["id"], int(fields["version"])) for _e, fields in entries
                  if fields.get("kind") in TRACKED_KINDS or fields.get("kind") == EMBARGO_LIFT]
        articles = {a.id: a for a in await store.get_many(list(dict.fromkeys(a for a, _v in judged)))}
        for article_id, version in judged:  # each change at its own revision, as the dispatcher does
            article = articles.get(article_id)
            if article is None or not in_feed(article, now, None):
                continue
            if version < article.version:
                article = dataclasses.replace(article, latest=await store.revision(article_id, version))
            await self.record(store, article, everyone, feeds)
        await self._advance(keys=[keys.propagation_caught_up()], args=[entries[-1][0].partition("-")[0]])
        return len(entries)

    async def require(self, article: Article, partners: Iterable[Partner], feeds: Iterable[FeedDefinition],
                      headline: str | None = None, awaiting: frozenset[str] = frozenset()) -> dict[str, Delivery]:
        """Record who must receive the article's latest revision (if it is tracked), and answer them with
        what each is sent. Called with the article as a feed may show it now (not embargoed or withheld).
        ``awaiting``: partners with an earlier revision queued or in flight to them (the dispatcher knows):
        they have the story as surely as a receipt says so."""
        revision = article.latest
        if revision.kind not in TRACKED_KINDS:
            return {}
        feeds = tuple(feeds)
        names, ways = [], []
        for partner in partners:
            if_may, if_had = if_may_read_or_had(partner, revision, feeds)
            if if_may is None and if_had is None:
                continue
            names.append(partner.name)
            if if_may is None and partner.name in awaiting:
                if_may = if_had  # required whatever the receipts say
            ways += [partner.name, if_may or "", if_had or ""]
        if not names:
            return {}
        item = revision.kind in ITEM_KINDS
        since = int(revision.ingested_at.timestamp() * 1000)
        script_keys = [keys.propagation_items(), keys.propagation_item(article.id, revision.version),
                       keys.propagation_partners(article.id, revision.version),
                       keys.propagation_pending(article.id, revision.version),
                       keys.propagation_article_items(article.id)]
        for name in names:
            script_keys += [keys.partner_received(name), keys.partner_required(name), keys.partner_outstanding(name)]
        flat = await self._require(keys=script_keys, args=[
            article.id, revision.version, since, "1" if item else "0", revision.kind, article.uri, headline or "",
            *keys.PARTNER_PENDING_ITEMS_PARTS, *ways])
        return {flat[i]: Delivery(flat[i + 1]) for i in range(0, len(flat), 2)}

    # ----- reading: partners --------------------------------------------------------------------

    async def summaries(self, names: Sequence[str]) -> dict[str, Summary]:
        """Each partner's outstanding count, oldest outstanding time and lag: one Lua step for them all."""
        if not names:
            return {}
        answers = await self._summary(keys=[], args=[SUMMARY_LAG_SCAN, *keys.PARTNER_OUTSTANDING_PARTS,
                                                     *keys.PARTNER_REQUIRED_PARTS, *keys.PARTNER_RECEIVED_PARTS, *names])
        return {name: Summary(int(count), _ms(oldest) if oldest else None, int(lag))
                for name, (count, oldest, lag) in zip(names, answers, strict=True)}

    async def outstanding_page(self, name: str, offset: int = 0, limit: int = 100) -> tuple[int, list[Owed]]:
        """The partner's outstanding articles, oldest first (one page), and how many there are."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.partner_outstanding(name))
            pipe.zrange(keys.partner_outstanding(name), offset, offset + limit - 1, withscores=True)
            total, members = await pipe.execute()
        return int(total), await self._owed(name, [(m, s) for m, s in members])

    async def owed(self, name: str) -> list[Owed]:
        """Every requirement of the window, met or not (for one partner's status)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.partner_required(name))
            pipe.zrange(keys.partner_outstanding(name), 0, -1, withscores=True)
            required, outstanding = await pipe.execute()
        since = dict(outstanding)
        return await self._owed(name, [(a, since.get(a)) for a in required], required)

    async def _owed(self, name: str, members: list[tuple[str, float | None]],
                    required: dict[str, str] | None = None) -> list[Owed]:
        if not members:
            return []
        ids = [m for m, _s in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.partner_received(name), ids)
            if required is None:
                pipe.hmget(keys.partner_required(name), ids)
            answers = await pipe.execute()
        got = answers[0]
        versions = [required[i] for i in ids] if required is not None else answers[1]
        result = []
        for (article_id, since), raw, version in zip(members, got, versions, strict=True):
            received, at = _receipt(raw)
            result.append(Owed(article_id, int(version or 0), received, at,
                               _ms(since) if since is not None else None))
        return result

    # ----- reading: corrections and kills -------------------------------------------------------

    async def window(self, since: datetime, names: bool = False) -> list[Settled]:
        """Every correction and kill since ``since``, newest first, with how many partners (and, with
        ``names``, which) have not yet received it: one Lua step for the window."""
        answers = await self._window(keys=[keys.propagation_receipts_to_settle(), keys.propagation_items()],
                                     args=[*_SETTLE_PARTS, int(since.timestamp() * 1000), "1" if names else "0"])
        result = []
        for member, score, count, kind, *pending in answers:
            article_id, _, version = member.partition("|")
            result.append(Settled(article_id, int(version), kind, _ms(score), int(count), tuple(pending)))
        return result

    async def pending_per_partner(self, names: Sequence[str], since: datetime) -> list[tuple[str, str, int, datetime]]:
        """(partner, kind, how many of its items of that kind ingested since ``since`` it has not received,
        the oldest's ingest time), for the partners with any: one Lua step that reads each partner's
        pending items (:func:`keys.partner_pending_items`), never the window's items."""
        if not names:
            return []
        answers = await self._per_partner(keys=[keys.propagation_receipts_to_settle()],
                                          args=[*_SETTLE_PARTS, int(since.timestamp() * 1000), *names])
        return [(name, kind, int(count), _ms(oldest)) for name, kind, count, oldest in answers]

    async def reconcile_partner_index(self, partner_names: Iterable[str],
                                      step_pairs: int = INDEX_STEP_PAIRS) -> tuple[int, int]:
        """Make the partners' pending items (:func:`keys.partner_pending_items`) hold exactly the items'
        pending pairs: add the missing, drop the stale, in Lua steps of about ``step_pairs`` pairs. Run by each maintenance run, so an index built by an older version (or none, after an
        upgrade or a restore) is whole again within one run. Returns (items copied, members dropped)."""
        await self.settle_receipts()
        members = await self.redis.zrange(keys.propagation_items(), 0, -1)
        parts = [*keys.PROPAGATION_PENDING_PARTS, *keys.PARTNER_PENDING_ITEMS_PARTS]
        copied = 0
        while copied < len(members):
            copied += int(await self._index(keys=[keys.propagation_items()], args=[
                *parts, step_pairs, *members[copied:copied + step_pairs]])) or 1
        names, checked, dropped = list(partner_names), 0, 0
        while checked < len(names):
            done, gone = await self._unindex(keys=[], args=[*parts, step_pairs, *names[checked:checked + 500]])
            checked, dropped = checked + (int(done) or 1), dropped + int(gone)
        return len(members), dropped

    async def items(self, page: Sequence[Settled]) -> list[Item]:
        """One page of settled items with their details and counts."""
        if not page:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in page:
                pipe.hgetall(keys.propagation_item(item.article_id, item.version))
                pipe.hlen(keys.propagation_partners(item.article_id, item.version))
            answers = await pipe.execute()
        result = []
        for n, item in enumerate(page):
            meta, required = answers[2 * n], answers[2 * n + 1]
            if not meta:
                continue
            result.append(Item(item.article_id, item.version, meta["kind"], meta["uri"], meta.get("headline") or None,
                               item.ingested_at, int(required), item.outstanding))
        return result

    async def item_partners(self, article_id: str, version: int, offset: int = 0,
                            limit: int = 100) -> list[tuple[str, Delivery, int, datetime | None]]:
        """One page of an item's partners, not received first, then by name: (partner, what it is sent,
        the version it has received (0: none), when)."""
        return (await self.items_partners([(article_id, version)], offset, limit))[0]

    async def items_partners(self, items: Sequence[tuple[str, int]], offset: int = 0,
                             limit: int = 100) -> list[list[tuple[str, Delivery, int, datetime | None]]]:
        """:meth:`item_partners` for each (article, version), in two round trips for them all."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for article_id, version in items:
                pipe.hgetall(keys.propagation_partners(article_id, version))
                pipe.smembers(keys.propagation_pending(article_id, version))
            answers = await pipe.execute()
        pages = []
        for partners, pending in zip(answers[0::2], answers[1::2], strict=True):
            pages.append((partners, sorted(partners, key=lambda p: (p not in pending, p))[offset:offset + limit]))
        pairs = [value for (article_id, _version), (_partners, ordered) in zip(items, pages, strict=True)
                 for name in ordered for value in (name, article_id)]
        got = iter(await self._receipts(keys=[], args=[*keys.PARTNER_RECEIVED_PARTS, *pairs]) if pairs else ())
        return [[(name, Delivery(partners[name]), *_receipt(next(got))) for name in ordered]
                for partners, ordered in pages]

    async def settle_receipts(self) -> None:
        """Drop the partners of the receipts noted since the last settling from their items' pending sets,
        a batch per Lua step (so Redis is never held long), until none are left."""
        while await self._settle_only(keys=[keys.propagation_receipts_to_settle()], args=list(_SETTLE_PARTS)):
            pass

    # ----- retention ----------------------------------------------------------------------------

    async def trim(self, partner_names: Iterable[str], window: timedelta, now: datetime) -> int:
        """Forget corrections and kills older than the window, and the requirements of articles unchanged
        for the window (their receipts are dropped after it too)."""
        cutoff = now - window
        cutoff_ms = int(cutoff.timestamp() * 1000)
        dropped = 0
        await self.settle_receipts()
        old = await self.redis.zrange(keys.propagation_items(), "-inf", cutoff_ms, byscore=True)
        names = list(partner_names)
        if old:
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in old:
                    article_id, _, version = member.partition("|")
                    pipe.delete(keys.propagation_item(article_id, int(version)),
                                keys.propagation_partners(article_id, int(version)),
                                keys.propagation_pending(article_id, int(version)))
                    pipe.srem(keys.propagation_article_items(article_id), version)
                pipe.zrem(keys.propagation_items(), *old)
                for name in names:
                    for kind in ITEM_KINDS:
                        pipe.zremrangebyscore(keys.partner_pending_items(name, kind), "-inf", cutoff_ms)
                await pipe.execute()
            dropped += len(old)
        cutoff_micros = int(cutoff.timestamp() * 1_000_000)
        # Only the articles that went quiet since the last trim (their last change crossed the cutoff):
        # a trim costs what changed, not every partner's every requirement.
        since = await self.redis.get(keys.propagation_trimmed_to())
        stale = await self.redis.zrange(keys.articles_by_change(), int(since or 0), f"({cutoff_micros}",
                                        byscore=True)
        for start in range(0, len(stale), TRIM_BATCH):
            batch = stale[start:start + TRIM_BATCH]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hdel(keys.partner_required(name), *batch)
                    pipe.zrem(keys.partner_outstanding(name), *batch)
                dropped += sum(int(n) for n in (await pipe.execute())[0::2])
        if stale:  # nothing went quiet: nothing to remember (and no write at all)
            await self.redis.set(keys.propagation_trimmed_to(), cutoff_micros)
        return dropped


async def partner_status(partner: Partner, ledger: PollLedger, requirements: Requirements, store: ArticleStore,
                         feeds: dict[str, FeedDefinition], now: datetime | None = None,
                         limit: int = STATUS_ARTICLES) -> PartnerStatus:
    """Last poll and push, the last hour's polls and 304 ratio, and what the partner must receive of the
    status window (from its requirements, not a rescan): outstanding first (oldest first), then
    received; at most ``limit`` articles listed, ``outstanding`` counts them all."""
    now = now or utc_now()
    await ledger.flush()
    last_poll, last_push = (await ledger.last_seen([partner.name]))[partner.name]
    lines = [line for line in await ledger.read(partner.name, now - timedelta(hours=1))
             if not line.feed.startswith(PUSH_PREFIX)]
    polls = sum(line.count for line in lines)
    not_modified = sum(line.count for line in lines if line.status == 304)
    owed = sorted(await requirements.owed(partner.name),
                  key=lambda o: (o.outstanding_since is None, o.outstanding_since or o.received_at or now))
    outstanding = sum(1 for o in owed if o.outstanding_since is not None)
    report = await receipts(partner, owed[:limit], store, feeds, now)
    return PartnerStatus(
        partner=partner.name,
        active=partner.active,
        last_poll=last_poll,
        last_push=last_push,
        last_hour=PollSummary(polls=polls, not_modified=not_modified,
                              not_modified_ratio=round(not_modified / polls, 3) if polls else None),
        articles=tuple(report),
        outstanding=outstanding,
    )


async def receipts(partner: Partner, owed: list[Owed], store: ArticleStore, feeds: dict[str, FeedDefinition],
                   now: datetime) -> list[ArticleReceipt]:
    """The listed requirements as the API shows them (one read of their articles)."""
    articles = {a.id: a for a in await store.get_many([o.article_id for o in owed])}
    result = []
    for item in owed:
        article = articles.get(item.article_id)
        if article is None:
            continue
        revision = article.latest if article.version == item.required else \
            await store.revision(article.id, item.required)
        sent = requirement(partner, revision, feeds.values(), True) or Delivery.CONTENT
        since = item.outstanding_since
        result.append(ArticleReceipt(
            id=article.id, uri=article.uri, version=item.required, kind=ChangeKind(revision.kind),
            pub_status=PubStatus(revision.pub_status), received=since is None,
            received_version=item.received or None, received_at=item.received_at if since is None else None,
            outstanding_since=since,
            outstanding_seconds=round(max(0.0, (now - since).total_seconds()), 3) if since else None,
            delivery=sent))
    return result
