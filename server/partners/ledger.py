"""What each partner was delivered by poll: the poll ledger, render manifests, and a partner's status.

Every authorised feed or item response appends a line (time, feed, format, status, bytes, render id)
to a buffer in memory; a background task writes the buffer every flush interval in one pipeline, one
capped Redis Stream per partner. A crash loses at most one interval of ledger lines, never an article.
A render's manifest (which article versions it holds) is written once, under its render id.

A partner has *received* version N of an article when it fetched (200, or 304 on the ETag it had) a
render whose manifest holds that article at version N or later, or a push of it was acknowledged. The
flush keeps a per-partner summary of that (article -> newest version received, and when), so status
never depends on how many ledger lines are still kept. The summary is written by
:mod:`server.partners.receipts`, the one place of that rule: here for polls, at each flush; for pushes
by the push queue, in the script that ends the delivery (so a crash cannot lose a push receipt; the
push's ledger line, which only feeds ``lastPush``, is still buffered here).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from server.articles.store import ArticleStore
from server.core import keys
from server.core.values import iso, parse_iso, utc_now
from server.domain.articles import CORRECTION, KILL, UPDATE, Change
from server.partners.cursor_acks import CursorAcks
from server.partners.receipts import ReceiptWriter, drop_older_than
from server.partners.receipts import read as read_receipts

LEDGER_MAX_LINES = 20_000
PUSH_PREFIX = "push:"  # ledger lines of acknowledged pushes: feed "push:<destination id>"
LAST_PUSH = "push"  # the field of the last-used hash that holds the last acknowledged push (never a key id)
STATUS_WINDOW = timedelta(days=7)
MANIFEST_RETENTION = timedelta(days=8)
ACTIVITY_KEPT_SECONDS = 26 * 3600  # the hourly counters of the dashboard's 24-hour chart


@dataclass(frozen=True, slots=True)
class PollLine:
    at: datetime  # the last of the responses the line stands for
    feed: str  # a feed name, "item:<id>" or "push:<destination>"
    format: str
    status: int
    size: int  # bytes, summed over ``count``
    render_id: str
    count: int = 1  # identical responses within one flush interval share a line


class PollLedger:
    def __init__(self, redis: Redis, cursor_acks: CursorAcks | None = None) -> None:
        self.redis = redis
        self.cursor_acks = cursor_acks  # applies ``?since=N`` acknowledgements at each flush
        self._acks: dict[tuple[str, str], int] = {}  # (partner, feed) -> the highest cursor polled
        self._receipts_writer = ReceiptWriter(redis)
        # What each partner received since the last flush: partner -> article -> (version, epoch seconds).
        self._receipts: dict[str, dict[str, tuple[int, float]]] = {}
        self._credited: OrderedDict[tuple[str, str], None] = OrderedDict()  # (partner, render id) done here
        # Identical responses (same partner, feed, format, status and render) within one flush interval
        # become one line with a count: a partner hammering a feed cannot turn into a Redis write
        # per request, and the ledger stays exact. (partner, feed, format, status, render id) ->
        # [last response's epoch seconds, bytes, count].
        self._lines: dict[tuple[str, str, str, int, str], list] = {}
        self._manifests: dict[str, bytes] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._manifests_written: OrderedDict[str, None] = OrderedDict()  # render ids this process wrote
        self._flush_lock = asyncio.Lock()

    def record(self, partner: str, key_id: str | None, feed: str, fmt: str, status: int, size: int,
               render_id: str, manifest: tuple[tuple[str, int], ...] | None = None, at: float | None = None,
               since: int | None = None) -> None:
        """Buffer one line (no I/O; ``at`` is epoch seconds, now by default). The render's manifest is
        written with the first line that names it in this process (``SET NX``: once per render id,
        whichever process delivers it first). ``since``: the cursor of a since page answered 200 or 304,
        an acknowledgement of everything before it (:mod:`server.partners.cursor_acks`)."""
        at = time.time() if at is None else at
        if since is not None and status in (200, 304) and since > self._acks.get((partner, feed), -1):
            self._acks[(partner, feed)] = since
        key = (partner, feed, fmt, status, render_id)
        pending = self._lines.get(key)
        if pending is None:
            self._lines[key] = [at, size, 1]
        else:
            pending[0] = at
            pending[1] += size
            pending[2] += 1
        if key_id is not None:
            self._last_used[(partner, key_id)] = at
        elif feed.startswith(PUSH_PREFIX):
            self._last_used[(partner, LAST_PUSH)] = at
        if manifest is None or (partner, render_id) in self._credited:
            return  # the usual case: this partner re-polled a render already credited here
        if render_id not in self._manifests_written:
            self._manifests[render_id] = orjson.dumps(manifest)
            self._manifests_written[render_id] = None
            if len(self._manifests_written) > 10_000:
                self._manifests_written.popitem(last=False)
        if status in (200, 304):
            # Credit each render once per partner and process: a partner re-polling the same page
            # costs no Redis write at all.
            receipts = self._receipts.setdefault(partner, {})
            for article_id, version in manifest:
                if version > receipts.get(article_id, (0, at))[0]:
                    receipts[article_id] = (version, at)
            self._credited[(partner, render_id)] = None
            if len(self._credited) > 50_000:
                self._credited.popitem(last=False)

    async def flush(self) -> int:
        """Write what is buffered. A flush that starts while another is writing waits for it, so that
        when it returns everything buffered before the call is in Redis (the status endpoints rely on
        that; without the wait they could read while the background flush still held the lines)."""
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> int:
        lines, self._lines = self._lines, {}
        manifests, self._manifests = self._manifests, {}
        last_used, self._last_used = self._last_used, {}
        receipts, self._receipts = self._receipts, {}
        acks, self._acks = self._acks, {}
        if not (lines or manifests or last_used or receipts or acks):
            return 0
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for render_id, manifest in manifests.items():
                    record_manifest(pipe, render_id, manifest)
                activity: dict[tuple[int, str], int] = {}
                for (_partner, feed, _fmt, _status, _render), (at, _size, count) in lines.items():
                    slot = (int(at // 3600) * 3600, "pushes" if feed.startswith(PUSH_PREFIX) else "polls")
                    activity[slot] = activity.get(slot, 0) + count
                for (hour, field), count in activity.items():
                    pipe.hincrby(keys.activity_hour(hour), field, count)
                    pipe.expire(keys.activity_hour(hour), ACTIVITY_KEPT_SECONDS)
                for (partner, feed, fmt, status, render_id), (at, size, count) in lines.items():
                    pipe.xadd(keys.poll_ledger(partner), {
                        "at": _iso_epoch(at), "feed": feed, "format": fmt, "status": status, "bytes": size,
                        "render": render_id, "count": count,
                    }, maxlen=LEDGER_MAX_LINES, approximate=True)
                for (partner, key_id), at in last_used.items():
                    pipe.hset(keys.partner_last_used(partner), key_id, _iso_epoch(at))
                    everyone = keys.partners_last_push() if key_id == LAST_PUSH else keys.partners_last_poll()
                    pipe.zadd(everyone, {partner: int(at * 1000)}, gt=True)
                for partner, received in receipts.items():
                    await self._receipts_writer.write(
                        partner, ((article_id, version, int(at * 1000)) for article_id, (version, at) in received.items()),
                        client=pipe)
                await pipe.execute()
        except Exception:
            self._keep_acks(acks)
            for partner, received in receipts.items():
                mine = self._receipts.setdefault(partner, {})
                for article_id, got in received.items():
                    if got[0] > mine.get(article_id, (0, got[1]))[0]:
                        mine[article_id] = got
            for key, line in lines.items():  # keep them for the next flush
                newer = self._lines.get(key)
                self._lines[key] = line if newer is None else [newer[0], line[1] + newer[1], line[2] + newer[2]]
            self._manifests.update(manifests)
            raise
        if acks and self.cursor_acks is not None:
            try:  # after the lines and receipts are written: a failure here keeps only the acks
                await self.cursor_acks.apply(acks)
            except Exception:
                self._keep_acks(acks)
                raise
        return len(lines)

    def _keep_acks(self, acks: dict[tuple[str, str], int]) -> None:
        for ack, cursor in acks.items():
            self._acks[ack] = max(cursor, self._acks.get(ack, -1))

    async def activity(self, start: datetime, hours: int) -> list[tuple[int, int]]:
        """(polls, acknowledged pushes) of every partner per hour, ``hours`` hours from ``start`` (an
        hour's start): one small hash per hour, summed at each flush."""
        first = int(start.timestamp())
        async with self.redis.pipeline(transaction=False) as pipe:
            for hour in range(hours):
                pipe.hmget(keys.activity_hour(first + 3600 * hour), ["polls", "pushes"])
            answers = await pipe.execute()
        return [(int(polls or 0), int(pushes or 0)) for polls, pushes in answers]

    async def has_received(self, partner: str, article_id: str) -> bool:
        """Whether the partner received any revision of the article (buffered here, or in Redis)."""
        if article_id in self._receipts.get(partner, {}):
            return True
        return bool(await self.redis.hexists(keys.partner_received(partner), article_id))

    async def last_seen(self, partners: list[str]) -> dict[str, tuple[datetime | None, datetime | None]]:
        """Per partner: its last poll (any key's last use) and its last acknowledged push: two reads for
        them all (the sorted sets the flush keeps beside each partner's last-used hash)."""
        if not partners:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(keys.partners_last_poll(), partners)
            pipe.zmscore(keys.partners_last_push(), partners)
            polls, pushes = await pipe.execute()
        return {name: (_from_ms(poll), _from_ms(push)) for name, poll, push in zip(partners, polls, pushes, strict=True)}

    async def reconcile_last_seen(self, partners: list[str]) -> None:
        """Raise the last-poll and last-push sorted sets to the partners' last-used hashes (each
        maintenance run: an older version kept only the hashes, so after an upgrade, or beside an older
        process, the sets would miss its polls). ``ZADD GT``: a flush meanwhile is never set back."""
        for start in range(0, len(partners), 500):
            batch = partners[start:start + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hgetall(keys.partner_last_used(name))
                used = await pipe.execute()
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, fields in zip(batch, used, strict=True):
                    polls = [parse_iso(at) for key_id, at in fields.items() if key_id != LAST_PUSH]
                    if polls:
                        pipe.zadd(keys.partners_last_poll(), {name: int(max(polls).timestamp() * 1000)}, gt=True)
                    if LAST_PUSH in fields:
                        pipe.zadd(keys.partners_last_push(),
                                  {name: int(parse_iso(fields[LAST_PUSH]).timestamp() * 1000)}, gt=True)
                await pipe.execute()

    async def received(self, partner: str) -> dict[str, tuple[int, datetime]]:
        """Per article: the newest version the partner has received, and when it first got it."""
        return await read_receipts(self.redis, partner)

    async def recent(self, partner: str, count: int) -> list[PollLine]:
        """The partner's newest ledger lines, newest first (at most ``count``)."""
        entries = await self.redis.xrevrange(keys.poll_ledger(partner), "+", "-", count=count)
        return [_line(fields) for _entry_id, fields in entries]

    async def read(self, partner: str, since: datetime) -> list[PollLine]:
        start = f"{int(since.timestamp() * 1000)}-0"
        entries = await self.redis.xrange(keys.poll_ledger(partner), start, "+")
        return [_line(fields) for _entry_id, fields in entries]


def record_manifest(pipe: Any, render_id: str, manifest: bytes) -> None:
    """Queue the manifest write on a pipeline: once per render id, with its time for the retention job."""
    pipe.set(keys.manifest(render_id), manifest, nx=True)
    pipe.zadd(keys.manifests_by_time(), {render_id: time.time()}, nx=True)


async def drop_old_receipts(redis: Redis, partner_names: list[str], now: datetime | None = None) -> int:
    """Receipts older than the manifests' retention no longer matter to any status window."""
    cutoff_ms = int(((now or utc_now()) - MANIFEST_RETENTION).timestamp() * 1000)
    dropped = 0
    for name in partner_names:
        dropped += await drop_older_than(redis, name, cutoff_ms)
    return dropped


async def drop_old_manifests(redis: Redis, now: datetime | None = None) -> int:
    cutoff = ((now or utc_now()) - MANIFEST_RETENTION).timestamp()
    old = await redis.zrange(keys.manifests_by_time(), "-inf", cutoff, byscore=True, offset=0, num=10_000)
    if not old:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(*(keys.manifest(r) for r in old))
        pipe.zrem(keys.manifests_by_time(), *old)
        await pipe.execute()
    return len(old)


async def recent_changes(store: ArticleStore, since: datetime,
                         kinds: tuple[str, ...] = (UPDATE, CORRECTION, KILL)) -> list[Change]:
    """Revisions and kills ingested since ``since``, oldest first (read backwards from the log's end)."""
    changes: list[Change] = []
    end = "+"
    while True:
        batch = await store.redis.xrevrange(keys.changelog(), end, "-", count=500)
        if not batch:
            break
        for entry_id, fields in batch:
            at = parse_iso(fields["at"])
            if at < since:
                return list(reversed(changes))
            if fields["kind"] in kinds:
                changes.append(Change(int(entry_id.split("-")[0]), fields["id"], int(fields["version"]),
                                      fields["kind"], at))
        end = f"({batch[-1][0]}"
    return list(reversed(changes))


def _iso_epoch(at: float) -> str:
    return iso(datetime.fromtimestamp(at, UTC))


def _line(fields: dict[str, str]) -> PollLine:
    return PollLine(parse_iso(fields["at"]), fields["feed"], fields["format"], int(fields["status"]),
                    int(fields["bytes"]), fields["render"], int(fields.get("count", 1)))


def _from_ms(millis: float | None) -> datetime | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, tz=UTC)
