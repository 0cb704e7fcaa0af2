"""The propagation rule (``server.domain.propagation``), table-tested without Redis: who must receive a
revision, and as what."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server.domain.articles import Article, Revision
from server.domain.feeds import FeedDefinition, FeedFilters
from server.domain.partners import Partner
from server.domain.propagation import (
    Delivery,
    as_delivered,
    if_may_read_or_had,
    main_headline,
    requirement,
    withdrawal,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FEEDS = (
    FeedDefinition("world", "World", "World news", filters=FeedFilters(subjects=("war",))),
    FeedDefinition("sport", "Sport", "Sport", filters=FeedFilters(slugline_prefix="sport-")),
    FeedDefinition("open", "Open", "English, public", public=True, filters=FeedFilters(language="en")),
)


def revision(subjects=("war",), slugline="x", language="fr", kind="correction", status="usable") -> Revision:
    document = {"uri": "urn:a", "type": "text", "subjects": [{"name": s} for s in subjects], "slugline": slugline,
                "language": language, "headlines": [{"value": "Secret headline"}], "pubStatus": status}
    return Revision("a1", "urn:a", 2, kind, kind, NOW, NOW, NOW, status, None, None, "cms", "h", document)


def partner(feeds=("world",), formats=("*",), active=True) -> Partner:
    return Partner("acme", tuple(feeds), tuple(formats), active=active)


REFILED = revision(subjects=("economy",))  # moved out of world, into no feed acme reads (and not English)
KILL_OUT = revision(subjects=("economy",), kind="kill", status="canceled")


@pytest.mark.parametrize(("who", "rev", "had", "expected"), [
    (partner(), revision(), False, Delivery.CONTENT),  # may read it now
    (partner(), revision(), True, Delivery.CONTENT),
    (partner(), REFILED, True, Delivery.WITHDRAWAL),  # had it, may not read it now: the withdrawal
    (partner(), REFILED, False, None),  # never had it, may not read it: nothing
    (partner(), KILL_OUT, True, Delivery.KILL),  # a kill follows the story, as the kill
    (partner(), KILL_OUT, False, None),
    (partner(), revision(kind="kill", status="canceled"), False, Delivery.KILL),  # entitled to the kill
    (partner(feeds=("sport",)), revision(), True, Delivery.WITHDRAWAL),  # its grants changed
    (partner(formats=("rss",)), revision(), True, Delivery.CONTENT),  # some format will do
    (partner(feeds=("sport",)), revision(language="en"), False, Delivery.CONTENT),  # a public feed holds it
    (partner(active=False), revision(), True, None),  # a disabled partner is sent nothing
    (partner(active=False), KILL_OUT, True, None),
])
def test_who_must_receive_a_revision(who, rev, had, expected):
    assert requirement(who, rev, FEEDS, had) == expected


@pytest.mark.parametrize(("who", "rev", "expected"), [
    (partner(), revision(), (Delivery.CONTENT, None)),
    (partner(), REFILED, (None, Delivery.WITHDRAWAL)),
    (partner(), KILL_OUT, (None, Delivery.KILL)),
    (partner(active=False), revision(), (None, None)),
])
def test_both_ways_round_for_the_atomic_check(who, rev, expected):
    assert if_may_read_or_had(who, rev, FEEDS) == expected
    may, had_only = expected
    assert requirement(who, rev, FEEDS, False) == may
    assert requirement(who, rev, FEEDS, True) == (may or had_only)


def test_a_withdrawal_is_the_tombstone_with_a_reason_and_no_content():
    gone = withdrawal(REFILED)
    assert gone.version == REFILED.version and gone.pub_status == "canceled"
    assert gone.document is not None and set(gone.document) == {"uri", "type", "pubStatus", "versionCreated", "edNote"}
    assert "Secret" not in str(gone.document) and "economy" not in str(gone.document)
    assert gone.kill_reason and "Withdrawn" in gone.kill_reason
    article = Article("a1", "urn:a", REFILED, NOW, 9)
    assert as_delivered(article, Delivery.WITHDRAWAL).latest == gone
    assert as_delivered(article, Delivery.CONTENT) is article
    assert not any(feed.holds(gone) for feed in FEEDS[:2])  # no private feed can hold it


def test_main_headline():
    assert main_headline(REFILED.document) == "Secret headline"
    assert main_headline({"headlines": [{"role": "sub", "value": "x"}]}) is None
    assert main_headline(None) is None
