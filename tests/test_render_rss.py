"""RSS 2.0 output: channel elements, items read back with feedparser (guid, RFC 822 pubDate,
atom:updated, content:encoded, dc:creator, categories, Media RSS), hub/paging links, tombstones."""

from __future__ import annotations

import dataclasses
from calendar import timegm
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import feedparser
from render_helpers import (
    ATOM_NS,
    BUILT_AT,
    KILL_REASON,
    MRSS_NS,
    feed_view,
    html_paragraphs,
    killed_revision,
    parse_xml,
    seed_document,
    seed_v1_revision,
    seed_v2_revision,
    view,
)

from server.feeds.render import RSS_MEDIA_TYPE, render_rss

RSS_SELF = "https://feeds.example.org/feeds/world.rss"
NEXT = RSS_SELF + "?after=abc"


def parsed_time(struct) -> datetime:
    return datetime.fromtimestamp(timegm(struct), UTC)


def rss_feed(**overrides):
    return feed_view(self_url=RSS_SELF, **overrides)


def test_channel_elements() -> None:
    feed = rss_feed(next_url=NEXT)
    data = render_rss(feed, [view(seed_v2_revision())])
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0
    assert parsed.version == "rss20"
    assert parsed.feed.title == feed.title
    assert parsed.feed.link == feed.alternate_url
    assert parsed.feed.subtitle == feed.description
    assert parsed.feed.language == "en"

    channel = parse_xml(data).find("channel")
    assert parsedate_to_datetime(channel.findtext("lastBuildDate")) == BUILT_AT
    atom_links = {link.get("rel"): link.get("href") for link in channel.iterfind(f"{{{ATOM_NS}}}link")}
    assert atom_links == {"self": RSS_SELF, "hub": feed.hub_url, "next": NEXT}


def test_item_values_equal_the_input() -> None:
    item = view(seed_v2_revision())
    data = render_rss(rss_feed(), [item])
    [entry] = feedparser.parse(data).entries
    assert entry.id == item.uri
    assert entry.guidislink is False
    assert entry.link == item.uri
    assert entry.title == item.headline
    assert entry.summary == item.standfirst
    assert parsed_time(entry.published_parsed) == item.first_created
    assert parsed_time(entry.updated_parsed) == item.version_created
    assert [t.term for t in entry.tags] == ["armed conflict", "Russia-Ukraine war"]
    paragraphs, note = html_paragraphs(entry.content[0].value)
    assert note == item.correction_note and len(paragraphs) == 13

    element = parse_xml(data).find("channel/item")
    guid = element.find("guid")
    assert guid.text == item.uri and guid.get("isPermaLink") == "false"
    assert parsedate_to_datetime(element.findtext("pubDate")) == item.first_created
    assert element.findtext(f"{{{ATOM_NS}}}updated") == item.version_created.isoformat()
    assert element.findtext("{http://purl.org/dc/elements/1.1/}creator") is None  # no byline in the seed


def test_guid_is_stable_across_revisions() -> None:
    [v1] = feedparser.parse(render_rss(rss_feed(), [view(seed_v1_revision())])).entries
    [v2] = feedparser.parse(render_rss(rss_feed(), [view(seed_v2_revision())])).entries
    assert v1.id == v2.id
    assert v1.published == v2.published
    assert v1.updated != v2.updated


def test_byline_is_dc_creator() -> None:
    document = seed_document(1)
    document["by"] = "Jane Reporter"
    data = render_rss(rss_feed(), [view(dataclasses.replace(seed_v1_revision(), document=document))])
    [entry] = feedparser.parse(data).entries
    assert entry.author == "Jane Reporter"
    assert parse_xml(data).findtext("channel/item/{http://purl.org/dc/elements/1.1/}creator") == "Jane Reporter"


def test_media_rss_photos() -> None:
    item = view(seed_v2_revision())
    data = render_rss(rss_feed(), [item])
    [entry] = feedparser.parse(data).entries
    assert [m["url"] for m in entry.media_content] == [p.href for p in item.photos]
    assert [c["content"] for c in entry.media_credit] == ["AP", "AP"]
    contents = parse_xml(data).findall(f"channel/item/{{{MRSS_NS}}}content")
    assert [c.findtext(f"{{{MRSS_NS}}}description") for c in contents] == [p.caption for p in item.photos]
    assert [c.get("medium") for c in contents] == ["image", "image"]


def test_killed_item_is_a_tombstone() -> None:
    item = view(killed_revision())
    data = render_rss(rss_feed(), [item])
    [entry] = feedparser.parse(data).entries
    assert entry.id == item.uri
    assert entry.title.startswith("Withdrawn: ")
    assert "withdrawn" in entry.summary and KILL_REASON in entry.summary
    assert "content" not in entry and "media_content" not in entry
    assert parse_xml(data).find("channel/item/{http://purl.org/rss/1.0/modules/content/}encoded") is None


def test_media_type() -> None:
    assert RSS_MEDIA_TYPE == "application/rss+xml"
