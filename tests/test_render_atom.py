"""Atom (RFC 4287) output: feed-level elements, entries read back with feedparser, Media RSS photos,
paging and hub links, tombstones, and the standalone entry document."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import feedparser
from render_helpers import (
    ATOM_NS,
    BUILT_AT,
    KILL_REASON,
    MRSS_NS,
    feed_view,
    killed_revision,
    parse_xml,
    seed_document,
    seed_v1_revision,
    seed_v2_revision,
    view,
)

from server.feeds.render import ATOM_MEDIA_TYPE, render_atom, render_atom_entry

NEXT = "https://feeds.example.org/feeds/world.atom?after=abc"
PREV = "https://feeds.example.org/feeds/world.atom?before=abc"
FIRST = "https://feeds.example.org/feeds/world.atom"


def parsed_time(struct) -> datetime:
    from calendar import timegm
    from datetime import UTC

    return datetime.fromtimestamp(timegm(struct), UTC)


def links_by_rel(links) -> dict[str, str]:
    return {link["rel"]: link["href"] for link in links}


def test_feed_elements() -> None:
    feed = feed_view()
    parsed = feedparser.parse(render_atom(feed, [view(seed_v2_revision())]))
    assert parsed.bozo == 0
    assert parsed.version == "atom10"
    assert parsed.feed.id == feed.self_url
    assert parsed.feed.title == feed.title
    assert parsed.feed.subtitle == feed.description
    assert parsed_time(parsed.feed.updated_parsed) == BUILT_AT
    assert parsed.feed.author == feed.title
    links = links_by_rel(parsed.feed.links)
    assert links["self"] == feed.self_url
    assert links["alternate"] == feed.alternate_url
    assert links["hub"] == feed.hub_url
    assert "next" not in links
    assert parse_xml(render_atom(feed, [])).get("{http://www.w3.org/XML/1998/namespace}lang") == "en"


def test_paging_links_and_shared_feed_id() -> None:
    feed = feed_view(self_url=NEXT, next_url=NEXT + "2", prev_url=PREV, first_url=FIRST)
    parsed = feedparser.parse(render_atom(feed, []))
    links = links_by_rel(parsed.feed.links)
    assert links["next"] == NEXT + "2"
    assert links["previous"] == PREV
    assert links["first"] == FIRST
    assert parsed.feed.id == FIRST  # every page is the same feed


def test_entry_values_equal_the_input() -> None:
    item = view(seed_v2_revision())
    document = seed_document(2)
    [entry] = feedparser.parse(render_atom(feed_view(), [item])).entries

    assert entry.id == document["uri"]
    assert entry.link == document["uri"]
    assert entry.title == document["headlines"][0]["value"]
    assert entry.summary == item.standfirst
    assert parsed_time(entry.published_parsed) == item.first_created
    assert parsed_time(entry.updated_parsed) == item.version_created
    assert entry.content[0].type == "text/html"
    assert entry.author == feed_view().title  # no byline in the seed: the feed's
    assert [(t.term, t.label) for t in entry.tags] == [
        ("http://cv.iptc.org/newscodes/mediatopic/16000000", "armed conflict"),
        ("russia-ukraine-war", "Russia-Ukraine war"),
    ]
    assert entry.syndicate_version == "2"
    assert entry.syndicate_signal == "correction"
    assert entry.syndicate_pubstatus == "usable"


def test_byline_becomes_the_entry_author() -> None:
    document = seed_document(1)
    document["by"] = "Jane Reporter"
    item = view(dataclasses.replace(seed_v1_revision(), document=document))
    [entry] = feedparser.parse(render_atom(feed_view(), [item])).entries
    assert entry.author == "Jane Reporter"


def test_each_photo_is_its_own_media_content() -> None:
    item = view(seed_v2_revision())
    data = render_atom(feed_view(), [item])
    [entry] = feedparser.parse(data).entries
    assert [(m["url"], m["type"], m["medium"], m["width"], m["height"]) for m in entry.media_content] == [
        (p.href, p.content_type, "image", str(p.width), str(p.height)) for p in item.photos]
    assert [(c["role"], c["content"]) for c in entry.media_credit] == [("photographer", "AP")] * 2

    entry_element = parse_xml(data).find(f"{{{ATOM_NS}}}entry")
    assert entry_element.find(f"{{{MRSS_NS}}}group") is None
    contents = entry_element.findall(f"{{{MRSS_NS}}}content")
    assert len(contents) == 2
    for content, photo in zip(contents, item.photos, strict=True):
        assert content.findtext(f"{{{MRSS_NS}}}title") == photo.headline
        assert content.findtext(f"{{{MRSS_NS}}}description") == photo.caption
        assert content.findtext(f"{{{MRSS_NS}}}credit") == "AP"
        assert content.findtext(f"{{{MRSS_NS}}}copyright") == "The Associated Press"


def test_photos_can_be_left_out() -> None:
    data = render_atom(feed_view(include_photos=False), [view(seed_v2_revision())])
    assert list(parse_xml(data).iter(f"{{{MRSS_NS}}}content")) == []
    assert "media_content" not in feedparser.parse(data).entries[0]


def test_entry_order_is_the_input_order() -> None:
    v1 = view(seed_v1_revision())
    other = dataclasses.replace(v1, uri="https://news.example.com/other", headline="Other")
    entries = feedparser.parse(render_atom(feed_view(), [other, v1])).entries
    assert [e.id for e in entries] == [other.uri, v1.uri]


def test_killed_item_is_a_tombstone_entry() -> None:
    item = view(killed_revision())
    data = render_atom(feed_view(), [item])
    [entry] = feedparser.parse(data).entries
    assert entry.id == item.uri
    assert entry.title == f"Withdrawn: {seed_document(2)['headlines'][0]['value']}"
    assert "withdrawn" in entry.summary and KILL_REASON in entry.summary
    assert "content" not in entry
    assert "media_content" not in entry
    assert entry.syndicate_pubstatus == "canceled"
    assert parsed_time(entry.updated_parsed) == item.version_created


def test_standalone_entry_document() -> None:
    feed, item = feed_view(), view(seed_v2_revision())
    data = render_atom_entry(feed, item)
    root = parse_xml(data)
    assert root.tag == f"{{{ATOM_NS}}}entry"
    assert root.findtext(f"{{{ATOM_NS}}}id") == item.uri
    assert root.findtext(f"{{{ATOM_NS}}}title") == item.headline
    assert root.findtext(f"{{{ATOM_NS}}}author/{{{ATOM_NS}}}name") == feed.title
    assert len(root.findall(f"{{{MRSS_NS}}}content")) == 2
    assert root.nsmap[None] == ATOM_NS
    # The same entry as inside the feed.
    feed_entry = parse_xml(render_atom(feed, [item])).find(f"{{{ATOM_NS}}}entry")
    assert [(e.tag, e.text, dict(e.attrib)) for e in root.iter()][1:] == [
        (e.tag, e.text, dict(e.attrib)) for e in feed_entry.iter()][1:]


def test_media_type() -> None:
    assert ATOM_MEDIA_TYPE == "application/atom+xml"
