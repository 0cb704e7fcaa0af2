"""Every Redis key name the server uses is built here, and only here.

Durable keys (articles, revisions, the change log) never get a TTL; cache keys (rendered feeds) always
do, so that ``maxmemory-policy volatile-lru`` can only ever evict caches. ``docs/architecture.md``
lists the layout.
"""

from __future__ import annotations

PREFIX = "syn"

# Keys that always have a TTL: caches, locks, counters of one-minute windows, heartbeats, metrics
# snapshots, ended dashboard sessions, the hourly activity counters. Every other key is durable and never has one.
EXPIRING_PREFIXES = tuple(f"{PREFIX}:{kind}:" for kind in (
    "cache", "lock", "ratelimit", "limit", "heartbeat:worker", "metrics:process", "ops:ended", "activity"))


def expires(key: str) -> bool:
    """Whether ``key`` always has a TTL (and so, under ``maxmemory-policy volatile-lru``, may be evicted);
    False: a durable key, which never has one."""
    return key.startswith(EXPIRING_PREFIXES)

# Pub/sub channel on which processes announce changes to each other (cache invalidation).
CHANGES_CHANNEL = f"{PREFIX}:changes"


def article(article_id: str) -> str:
    """Hash: the article's current state (latest version, status, times, purge tombstone)."""
    return f"{PREFIX}:article:{article_id}"


def revisions(article_id: str) -> str:
    """Hash: version number -> revision record (JSON), every revision ever stored."""
    return f"{PREFIX}:article:{article_id}:revisions"


def content_hashes(article_id: str) -> str:
    """Hash: content hash -> version, to recognise retries of revisions already stored."""
    return f"{PREFIX}:article:{article_id}:hashes"


def article_ids_by_uri() -> str:
    """Hash: ninjs uri -> article id."""
    return f"{PREFIX}:articles:by-uri"


def articles_by_change() -> str:
    """Sorted set: article id scored by the ingest time (epoch microseconds) of its latest change."""
    return f"{PREFIX}:articles:by-change"


def articles_by_status(status: str) -> str:
    """Sorted set per pubStatus (usable, withheld, canceled), scored like :func:`articles_by_change`."""
    return f"{PREFIX}:articles:by-status:{status}"


def revisions_with_bodies() -> str:
    """Sorted set: ``<id>:<version>`` of superseded revisions that still hold a body, scored by ingest
    time (epoch microseconds); the retention job drops their bodies once they are old enough."""
    return f"{PREFIX}:revisions:with-bodies"


def embargoes() -> str:
    """Sorted set: id of each article whose latest revision is under embargo, scored by the embargo's
    end (epoch microseconds); the embargo scheduler releases them when it passes."""
    return f"{PREFIX}:articles:embargoed"


def changelog() -> str:
    """Stream: one entry per change; entry id ``<seq>-0`` where seq is the global change number."""
    return f"{PREFIX}:changelog"


def changelog_seq() -> str:
    """Counter: the last change sequence number handed out."""
    return f"{PREFIX}:changelog:seq"


def maintenance_lock() -> str:
    """Short-lived lock so that one process at a time runs the retention job."""
    return f"{PREFIX}:lock:maintenance"


STATUSES = ("usable", "withheld", "canceled")


def feed_generation(feed_name: str) -> str:
    """Counter: bumped (atomically with the revision) whenever an article enters, changes in or leaves
    the feed; a cached render is current while its generation is."""
    return f"{PREFIX}:feed:{feed_name}:generation"


def rendered_feed(feed_name: str, fmt: str, page: str, generation: int, variant: str = "full",
                  epoch: str = "") -> str:
    """Hash (cache, with a TTL): the rendered bytes of one feed page in every encoding, and its metadata.
    ``page`` is ``head``, ``since-<cursor>`` or ``archive-<n>`` (an RFC 5005 archive page). The store's epoch is part of the name: after the store Redis comes back empty, generations start
    again from 0, and a separate cache Redis must not answer with pages of the store that was lost."""
    return f"{PREFIX}:cache:feed:{epoch}:{feed_name}:{generation}:{variant}:{fmt}:{page}"


def store_epoch() -> str:
    """String: a random id set (if absent) by the first process to start on this store. A process that
    finds it gone or changed knows the store Redis was wiped or replaced: it drops everything it keeps
    in memory about the store (rendered pages, generations, the key table) and recreates its consumer
    groups."""
    return f"{PREFIX}:epoch"


def render_lock(cache_key: str) -> str:
    """Single-flight lock (with a TTL) so that concurrent misses render a page once."""
    return f"{PREFIX}:lock:render:{cache_key}"


# ----- partners (issue 4) -------------------------------------------------------------------------

# Pub/sub channel announcing a new partners generation (any partner or key changed).
PARTNERS_CHANNEL = f"{PREFIX}:partners:changes"


def ended_session(session_id: str) -> str:
    """String with a TTL (the session's remaining life): an ops dashboard session ended by logout."""
    return f"{PREFIX}:ops:ended:{session_id}"


def partner(name: str) -> str:
    """String (JSON): one partner, its entitlements and its keys (digests only)."""
    return f"{PREFIX}:partner:{name}"


def partner_names() -> str:
    """Set: every partner's name."""
    return f"{PREFIX}:partners"


def partners_generation() -> str:
    """Counter: bumped on every partner or key change; processes reload their key table on it."""
    return f"{PREFIX}:partners:generation"


def partners_reactivated() -> str:
    """Hash: partner name -> the :func:`partners_generation` of the change that enabled it again.
    Written with that change (``PartnerStore``); a push dispatcher records what the partner is owed
    of the window's corrections and kills (it was judged inactive when they were dispatched), then
    deletes the entry if it is still that generation."""
    return f"{PREFIX}:partners:reactivated"


def activity_hour(hour_start: int) -> str:
    """Hash: ``polls`` and ``pushes`` answered in the hour starting at ``hour_start`` (epoch seconds), by
    every partner (summed at each flush; expires after a day and a bit): the dashboard's chart."""
    return f"{PREFIX}:activity:{hour_start}"


def replication_probe() -> str:
    """Counter: written only so that a following ``WAIT`` covers every earlier write (``ReplicaAcks.confirm``)."""
    return f"{PREFIX}:replication:probe"


def partners_last_poll() -> str:
    """Sorted set: partner name -> epoch ms of its last poll with a key (``ZADD GT``, with the last-used
    hash): every partner's last poll in one read, for the ops views."""
    return f"{PREFIX}:partners:last-poll"


def partners_last_push() -> str:
    """Sorted set: partner name -> epoch ms of its last acknowledged push (as ``partners_last_poll``)."""
    return f"{PREFIX}:partners:last-push"


def partner_cursors(name: str) -> str:
    """Hash: feed -> the last ``?since=`` cursor the partner acknowledged on it (server.partners.cursor_acks)."""
    return f"{PREFIX}:partner:{name}:cursors"


def partner_last_used(name: str) -> str:
    """Hash: key id -> when it was last used (written in the background, at most every flush); the field
    ``push`` holds the last acknowledged push."""
    return f"{PREFIX}:partner:{name}:last-used"


def poll_ledger(name: str) -> str:
    """Stream (capped): one entry per authorised feed or item response to the partner."""
    return f"{PREFIX}:partner:{name}:polls"


def partner_received(name: str) -> str:
    """Hash: article id -> ``<version>|<epoch ms>``, the newest version the partner has received (by
    poll or acknowledged push) and when it first got it. Written only by
    ``server.partners.receipts`` (the ledger's flush for polls, the push queue's completion for pushes)."""
    return f"{PREFIX}:partner:{name}:received"


# The same key for a Lua script that names partners itself (it joins prefix, name and suffix).
PARTNER_RECEIVED_PARTS = (f"{PREFIX}:partner:", ":received")
PARTNER_REQUIRED_PARTS = (f"{PREFIX}:partner:", ":required")
PARTNER_OUTSTANDING_PARTS = (f"{PREFIX}:partner:", ":outstanding")


def partner_required(name: str) -> str:
    """Hash: article id -> the newest version the partner must receive (a whole number), by the
    propagation rule (:mod:`server.domain.propagation`): it may read that revision now, or it had an
    earlier one. Written by the push dispatcher as it consumes each change (a Lua script that reads
    :func:`partner_received` in the same step); entries of articles unchanged for the status window
    are dropped by the retention job."""
    return f"{PREFIX}:partner:{name}:required"


def partner_outstanding(name: str) -> str:
    """Sorted set: article id scored by since when (epoch ms: the ingest time of the first required
    revision not yet received) the partner has owed it, for every article whose
    :func:`partner_required` version is above its :func:`partner_received` version. Added by the
    dispatcher's requirement script when received < required; removed by every receipt (poll flush,
    acknowledged push) in the same Lua step that raises received to ``>= required``. Members older than
    the status window are dropped by the retention job. ``ZCARD`` is the partner's outstanding count."""
    return f"{PREFIX}:partner:{name}:outstanding"


def partner_pending_items(name: str, kind: str) -> str:
    """Sorted set: ``<article id>|<version>`` of every correction (``kind`` ``correction``) or kill
    (``kill``) whose :func:`propagation_pending` set holds the partner, scored by its ingest time (epoch
    ms): the same pairs seen from the partner's side, so ``/metrics`` counts a partner's outstanding
    items and finds the oldest with a ``ZCOUNT`` and a ``ZRANGE``, whatever the window holds. Written in
    the same Lua steps as the pending sets (the requirement adds, the settling removes); the retention
    job drops members older than the window."""
    return f"{PREFIX}:partner:{name}:pending:{kind}"


PARTNER_PENDING_ITEMS_PARTS = (f"{PREFIX}:partner:", ":pending:")  # around the name; the kind follows


def propagation_trimmed_to() -> str:
    """Counter: the cutoff (epoch microseconds) of the last trim of the partners' requirements; the
    next trims only the articles whose last change fell between it and its own cutoff."""
    return f"{PREFIX}:propagation:trimmed-to"


def propagation_caught_up() -> str:
    """Counter: the last change number whose requirements an ops view recorded itself because no
    dispatcher had taken it yet (see ``Requirements.catch_up``)."""
    return f"{PREFIX}:propagation:caught-up"


def propagation_items() -> str:
    """Sorted set: ``<article id>|<version>`` of every correction and kill, scored by its ingest time
    (epoch ms); trimmed to the status window by the retention job."""
    return f"{PREFIX}:propagation:items"


def propagation_item(article_id: str, version: int) -> str:
    """Hash: one correction or kill: ``kind``, ``uri``, ``headline``, ``ingestedAt`` (epoch ms)."""
    return f"{PREFIX}:propagation:item:{article_id}:{version}"


def propagation_partners(article_id: str, version: int) -> str:
    """Hash: partner -> what it must be sent (``content``, ``kill``, ``withdrawal``) for that correction
    or kill: every partner that must receive it (HLEN: how many)."""
    return f"{PREFIX}:propagation:item:{article_id}:{version}:partners"


def propagation_article_items(article_id: str) -> str:
    """Set: the versions of the article that are corrections or kills of the window (their items)."""
    return f"{PREFIX}:propagation:article:{article_id}:items"


PROPAGATION_ARTICLE_ITEMS_PARTS = (f"{PREFIX}:propagation:article:", ":items")
PROPAGATION_PENDING_PARTS = (f"{PREFIX}:propagation:item:", ":pending")  # around ``<article id>:<version>``


def propagation_receipts_to_settle() -> str:
    """Set: ``<received key>|<article id>`` of every receipt that raised a version a requirement asks
    about, since the last settling: the next read drops those partners from the article's items'
    pending sets (so a read settles only what changed, never every pending pair)."""
    return f"{PREFIX}:propagation:to-settle"


def propagation_pending(article_id: str, version: int) -> str:
    """Set: the partners of :func:`propagation_partners` not yet known to have received it. A read
    settles it first (removes, in a Lua step, every partner of :func:`propagation_receipts_to_settle`
    whose receipt reached the version), so it only shrinks as receipts arrive; SCARD after settling is
    the item's outstanding count."""
    return f"{PREFIX}:propagation:item:{article_id}:{version}:pending"


def manifest(render_id: str) -> str:
    """String (JSON): which article versions one render holds, written once per render."""
    return f"{PREFIX}:manifest:{render_id}"


def manifests_by_time() -> str:
    """Sorted set: render id scored by when its manifest was written, for the retention job."""
    return f"{PREFIX}:manifests"


def rate_window(name: str, window_start: int) -> str:
    """Counter (with a TTL): tenths of requests the partner made in one rate-limit window."""
    return f"{PREFIX}:ratelimit:{name}:{window_start}"


def limit_window(counted: str, window_start: int) -> str:
    """Counter (with a TTL): how often ``counted`` (a limit's name and what it counts, such as
    ``failed-key:address:203.0.113.7`` or ``hub:topic:<url>``) happened in one one-minute window, summed
    over every process (``server.partners.ratelimit.SharedCounts``)."""
    return f"{PREFIX}:limit:{window_start}:{counted}"


# ----- push (issue 5) -----------------------------------------------------------------------------

PUSH_WAKE_CHANNEL = f"{PREFIX}:push:wake"  # "deliveries are due": workers need not wait for their poll
DISPATCH_GROUP = "push"  # consumer group on the change log that fans changes out to destinations


def destination(destination_id: str) -> str:
    """String (JSON): one push destination (a WebSub subscription or a partner webhook endpoint). A
    subscription made with a keyed topic holds that topic only sealed (``sealedTopic``), never the key."""
    return f"{PREFIX}:destination:{destination_id}"


def destination_ids() -> str:
    """Set: every destination's id."""
    return f"{PREFIX}:destinations"


def push_latest(destination_id: str) -> str:
    """Hash: article id -> the newest version waiting to be pushed to the destination (newer wins)."""
    return f"{PREFIX}:push:{destination_id}:latest"


def push_acked(destination_id: str) -> str:
    """Hash: article id -> the highest version the destination acknowledged (2xx); never sent again."""
    return f"{PREFIX}:push:{destination_id}:acked"


def push_state(destination_id: str) -> str:
    """Hash: article id -> JSON of the current delivery's attempts (first try, count, last error)."""
    return f"{PREFIX}:push:{destination_id}:state"


def push_due() -> str:
    """Sorted set: ``<destination id>|<article id>`` scored by when to try next (epoch ms)."""
    return f"{PREFIX}:push:due"


def push_leased() -> str:
    """Sorted set: deliveries a worker is making, scored by when its lease runs out (epoch ms);
    an expired lease (the worker died) puts the delivery back in :func:`push_due`."""
    return f"{PREFIX}:push:leased"


def push_waiting_since() -> str:
    """Sorted set: ``<destination id>|<article id>`` of every delivery not yet acknowledged, scored by
    when its revision started waiting (epoch ms): the queue's oldest pending age."""
    return f"{PREFIX}:push:waiting-since"


def push_failed() -> str:
    """Hash: ``<destination id>|<article id>`` -> JSON of a delivery given up on, kept for ops."""
    return f"{PREFIX}:push:failed"


def push_attempts() -> str:
    """Stream (capped): every delivery attempt with its outcome."""
    return f"{PREFIX}:push:attempts"


# ----- ops: heartbeats and metrics (issue 6) -------------------------------------------------------

def worker_heartbeat(process_id: str) -> str:
    """String (with a short TTL): set by a process (``<host>:<pid>``) while its push workers run."""
    return f"{PREFIX}:heartbeat:worker:{process_id}"


def worker_heartbeats() -> str:
    """Sorted set: process id of every worker heartbeat, scored by when it runs out (epoch ms)."""
    return f"{PREFIX}:heartbeat:workers"


def process_metrics(process_id: str) -> str:
    """String (JSON, with a short TTL): one process's Prometheus samples, for ``/metrics`` on any process."""
    return f"{PREFIX}:metrics:process:{process_id}"


def process_metrics_index() -> str:
    """Sorted set: process id of every metrics snapshot, scored by when it runs out (epoch ms)."""
    return f"{PREFIX}:metrics:processes"


def media_item(media_id: str) -> str:
    """String (JSON): a media item (picture, graphic, video, audio) a CMS pushed on its own (Superdesk),
    kept until the texts that reference it get it: its 3.x document, extra, pubStatus, content hash.
    ``media_id`` is :func:`server.domain.articles.article_id_for_uri` of its uri."""
    return f"{PREFIX}:media:{media_id}"


def media_users(media_id: str) -> str:
    """Set: ids of the articles whose associations hold or reference the media item; a later push of
    the item (a new version, or a kill) revises each of them."""
    return f"{PREFIX}:media:{media_id}:articles"


def package_media(article_id: str) -> str:
    """String (JSON): the package (Superdesk composite) that gave the article its media: ``package``
    (its uri) and ``media`` (``[association name, uri]`` pairs), kept when the text is pushed again."""
    return f"{PREFIX}:article:{article_id}:package"
