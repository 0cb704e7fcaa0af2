"""The access policy (server.domain.access) as tables: no HTTP, no Redis; every caller relies on these."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server.domain.access import (
    Refusal,
    feed_refusal,
    item_refusal,
    may_read_feed,
    may_read_item,
    readable_feeds,
)
from server.domain.articles import USABLE, WITHHELD, Revision
from server.domain.feeds import FeedDefinition, FeedFilters

T = datetime(2026, 1, 1, tzinfo=UTC)
LATEST = FeedDefinition(name="latest", title="Latest", description="all")
WORLD = FeedDefinition(name="world", title="World", description="world", filters=FeedFilters(subjects=("world",)))
HEADLINES = FeedDefinition(name="headlines", title="Headlines", description="public", public=True,
                           filters=FeedFilters(language="en"))
FEEDS = (LATEST, WORLD, HEADLINES)


def partner(feeds=("world",), formats=("rss",), active=True):
    from server.domain.partners import Partner
    return Partner(name="acme", feeds=tuple(feeds), formats=tuple(formats), active=active, created_at=T)


def revision(subjects=("world",), language="fr", status=USABLE, version=1):
    document = {"uri": "https://example.com/a", "language": language,
                "subjects": [{"name": s, "uri": f"http://cv.example.com/{s}"} for s in subjects]}
    return Revision(article_id="a" * 16, uri="https://example.com/a", version=version, kind="new", signal=None,
                    first_created=T, version_created=T, ingested_at=T, pub_status=status, embargoed_until=None,
                    ed_note=None, publisher="p", content_hash="h", document=document)


ACME = partner()
EVERYTHING = partner(feeds=("*",), formats=("*",))
DISABLED = partner(feeds=("*",), formats=("*",), active=False)
NO_FORMATS = partner(feeds=("*",), formats=())


@pytest.mark.parametrize(("reader", "feed", "fmt", "expected"), [
    (None, HEADLINES, "rss", None),  # a public feed: anyone, any format
    (None, HEADLINES, "newsml", None),
    (None, WORLD, "rss", Refusal.NEEDS_KEY),
    (None, LATEST, None, Refusal.NEEDS_KEY),
    (ACME, WORLD, "rss", None),
    (ACME, WORLD, "atom", Refusal.FORMAT),
    (ACME, LATEST, "rss", Refusal.FEED),
    (ACME, HEADLINES, "newsml", None),  # public: whatever the partner's grants
    (ACME, WORLD, None, None),  # in some format
    (EVERYTHING, LATEST, "json", None),
    (DISABLED, LATEST, "rss", Refusal.INACTIVE),
    (DISABLED, HEADLINES, "rss", None),
    (NO_FORMATS, WORLD, "rss", Refusal.FORMAT),
    (NO_FORMATS, WORLD, None, Refusal.FORMAT),
])
def test_feed_refusal(reader, feed, fmt, expected):
    assert feed_refusal(reader, feed, fmt) == expected
    assert may_read_feed(reader, feed, fmt) is (expected is None)


@pytest.mark.parametrize(("reader", "fmt", "expected"), [
    (None, None, ("headlines",)),
    (ACME, "rss", ("world", "headlines")),
    (ACME, "atom", ("headlines",)),
    (ACME, None, ("world", "headlines")),
    (EVERYTHING, "json", ("latest", "world", "headlines")),
    (DISABLED, None, ("headlines",)),
])
def test_readable_feeds(reader, fmt, expected):
    assert tuple(f.name for f in readable_feeds(reader, FEEDS, fmt)) == expected


@pytest.mark.parametrize(("reader", "item", "fmt", "expected"), [
    # a French world story is in latest and world, not in the English public headlines
    (ACME, revision(), "rss", None),
    (ACME, revision(), "newsml", Refusal.FORMAT),
    (None, revision(), "rss", Refusal.NEEDS_KEY),
    (partner(feeds=("latest",)), revision(), "rss", None),
    (partner(feeds=("latest",)), revision(subjects=()), "rss", None),
    (ACME, revision(subjects=("sport",)), "rss", Refusal.FEED),  # only latest holds it
    # an English story is in the public feed: readable by anyone, in any format
    (None, revision(language="en"), "newsml", None),
    (ACME, revision(language="en", subjects=("sport",)), "newsml", None),
    # withheld: nobody, whatever the grants
    (EVERYTHING, revision(status=WITHHELD), "rss", Refusal.NOT_HELD),
    # without a key, whatever the item: "needs a key" (nothing learnt of what exists)
    (None, revision(language="en", status=WITHHELD), "rss", Refusal.NEEDS_KEY),
    (None, None, "rss", Refusal.NEEDS_KEY),
    # nothing at all
    (EVERYTHING, None, "rss", Refusal.NOT_HELD),
    (DISABLED, revision(), "rss", Refusal.INACTIVE),
])
def test_item_refusal(reader, item, fmt, expected):
    assert item_refusal(reader, item, FEEDS, fmt) == expected
    assert may_read_item(reader, item, FEEDS, fmt) is (expected is None)


def test_an_item_is_judged_at_the_revision_asked_for():
    """v1 was in world, v2 was re-filed to sport only: a world-only partner may read v1, not v2."""
    v1, v2 = revision(version=1), revision(subjects=("sport",), version=2)
    assert may_read_item(ACME, v1, FEEDS, "rss")
    assert item_refusal(ACME, v2, FEEDS, "rss") is Refusal.FEED


def test_with_no_feeds_nothing_is_held():
    assert item_refusal(EVERYTHING, revision(), (), "rss") is Refusal.NOT_HELD
    assert readable_feeds(EVERYTHING, ()) == ()
