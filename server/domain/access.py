"""The access policy: which feeds, formats and revisions a partner (or an anonymous reader) may read.

One rule, decided here and only here, and used by every caller: feed polls (and their fast path),
items (``?version=`` included), WebSub subscriptions, webhooks, the push worker, the partner status,
propagation and the CLI.

- A **public** feed is readable by everyone, in every format: anonymous readers and every partner,
  whatever its grants. It is therefore part of every partner's reading (status, propagation and
  webhooks count it too).
- Any other feed is readable by an **active** partner granted the feed (or ``*``) in a format it is
  granted (or ``*``); a disabled partner reads nothing but public feeds, and only anonymously (its keys
  stop working).
- An **item** at a revision is readable when some feed the reader may read, in the format asked for,
  holds that revision, and the revision is not withheld (nor, when ``now`` is given, under its own
  embargo). Whether the article may be shown at all now
  (embargo, kill window) is :func:`server.domain.feeds.in_feed`; the caller asks that first.

The admin is not a reader here: ops read everything, and that is decided where callers are told apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from server.domain.articles import WITHHELD, Revision
from server.domain.feeds import FeedDefinition
from server.domain.partners import Partner


class Refusal(StrEnum):
    """Why a read is refused; None from a policy function means allowed."""

    NEEDS_KEY = "needs-key"  # no partner, and the feed is not public: 401
    INACTIVE = "inactive"  # the partner is disabled: 401, as for a revoked key
    FEED = "not-entitled-feed"  # 403
    FORMAT = "not-entitled-format"  # 403
    NOT_HELD = "not-held"  # no feed the reader may read holds the item at this revision: 404


def feed_refusal(partner: Partner | None, feed: FeedDefinition, fmt: str | None) -> Refusal | None:
    """Whether ``partner`` (None: anonymous) may read ``feed`` in ``fmt`` (None: in some format)."""
    if feed.public:
        return None
    if partner is None:
        return Refusal.NEEDS_KEY
    if not partner.active:
        return Refusal.INACTIVE
    if not partner.may_read_feed(feed.name):
        return Refusal.FEED
    if fmt is None:
        return None if partner.formats else Refusal.FORMAT
    if not partner.may_read_format(fmt):
        return Refusal.FORMAT
    return None


def may_read_feed(partner: Partner | None, feed: FeedDefinition, fmt: str | None = None) -> bool:
    return feed_refusal(partner, feed, fmt) is None


def readable_feeds(partner: Partner | None, feeds: Iterable[FeedDefinition],
                   fmt: str | None = None) -> tuple[FeedDefinition, ...]:
    """The feeds ``partner`` may read in ``fmt`` (None: in some format), in the order given."""
    return tuple(feed for feed in feeds if feed_refusal(partner, feed, fmt) is None)


def item_refusal(partner: Partner | None, revision: Revision | None, feeds: Iterable[FeedDefinition],
                 fmt: str | None, now: datetime | None = None) -> Refusal | None:
    """Whether ``partner`` may read an item at ``revision`` in ``fmt``: a feed it may read in that
    format holds that very revision, and the revision is not withheld. Not held at all (or withheld)
    is :attr:`Refusal.NOT_HELD` (:attr:`Refusal.NEEDS_KEY` without a key); else, of the refusals by the feeds that hold it, the nearest miss: no
    key, a disabled partner, a missing format (the feed is granted), a missing feed."""
    holding = [feed for feed in feeds if feed.holds(revision)]
    unseen = revision is None or revision.pub_status == WITHHELD or not holding or (
        now is not None and revision.embargoed_until is not None and revision.embargoed_until > now)
    if unseen:  # withheld, not held, or under that revision's own embargo (even if a later one has none)
        # Without a key, the answer is "needs a key" whatever the item is: an anonymous caller learns
        # nothing of what exists outside the public feeds.
        return Refusal.NEEDS_KEY if partner is None else Refusal.NOT_HELD
    refusals = [feed_refusal(partner, feed, fmt) for feed in holding]
    if None in refusals:
        return None
    for refusal in (Refusal.NEEDS_KEY, Refusal.INACTIVE, Refusal.FORMAT, Refusal.FEED):
        if refusal in refusals:
            return refusal
    return Refusal.NOT_HELD  # unreachable: every refusal is one of the above


def may_read_item(partner: Partner | None, revision: Revision | None, feeds: Iterable[FeedDefinition],
                  fmt: str | None = None) -> bool:
    return item_refusal(partner, revision, feeds, fmt) is None
