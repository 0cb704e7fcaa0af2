"""Properties every renderer must have, checked across all four formats: tombstones carry no story,
arbitrary (ingest-cleaned) text always gives well-formed output and valid NewsML-G2, the same input
gives the same bytes, and a 50-item feed renders."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import nh3
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from render_helpers import (
    ATOM_NS,
    XHTML_NS,
    feed_view,
    killed_revision,
    many_items,
    nar,
    newsml_errors,
    newsml_items,
    parse_xml,
    read_atom,
    read_json_feed,
    read_newsml,
    read_rss,
    seed_document,
    seed_paragraphs,
    seed_v2_revision,
    strip_xml_forbidden,
    view,
)

from server.feeds.render import (
    render_atom,
    render_atom_entry,
    render_json_feed,
    render_newsml_item,
    render_newsml_message,
    render_newsml_news_item,
    render_rss,
)

RENDERERS: dict[str, Callable] = {
    "atom": render_atom,
    "rss": render_rss,
    "newsml": render_newsml_message,
    "jsonfeed": render_json_feed,
}
XML_FORMATS = ("atom", "rss", "newsml")


def story_fragments() -> list[str]:
    """Pieces of the seed story a tombstone must not contain: a plain-text run of every body paragraph,
    the standfirst, the captions and the photo URLs."""
    document = seed_document(2)
    fragments = [re.findall(r"[A-Za-z0-9 ,.]{30,}", paragraph)[0][:30] for paragraph in seed_paragraphs(2)]
    fragments.append(document["descriptions"][0]["value"])
    for association in document["associations"]:
        fragments.append(association["descriptions"][0]["value"][:40])
        fragments.append(association["renditions"][0]["href"])
    return fragments


# --- tombstones -------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_document", [True, False], ids=["killed", "killed-and-purged"])
@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_killed_article_is_a_tombstone(fmt: str, keep_document: bool) -> None:
    item = view(killed_revision(keep_document=keep_document))
    data = RENDERERS[fmt](feed_view(), [item])
    for fragment in story_fragments():
        assert fragment.encode() not in data, fragment
    assert b"This story has been withdrawn." in data
    assert item.uri.encode() in data


@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_dropped_body_is_a_tombstone_that_is_not_withdrawn(fmt: str) -> None:
    item = view(dataclasses.replace(seed_v2_revision(), document=None))
    assert item.is_tombstone and not item.withdrawn
    assert (item.version, item.first_created, item.uri) == (2, seed_v2_revision().first_created,
                                                            seed_v2_revision().uri)
    data = RENDERERS[fmt](feed_view(), [item])
    for fragment in story_fragments():
        assert fragment.encode() not in data, fragment
    assert b"This story is no longer available." in data
    assert b"Withdrawn" not in data


def test_tombstone_view_keeps_identity_and_times() -> None:
    killed = killed_revision()
    item = view(killed)
    assert (item.article_id, item.uri, item.version) == (killed.article_id, killed.uri, 3)
    assert (item.first_created, item.version_created) == (killed.first_created, killed.version_created)
    assert item.withdrawn and item.is_tombstone
    assert item.body_html is item.body_text is item.standfirst is item.correction_note is None
    assert item.photos == () and item.subjects == ()


# --- arbitrary text -----------------------------------------------------------------------------------

MARKUP = ["<", ">", "&", "]]>", '"', "'", "&amp;", "&#0;", "<p>", "</p>", "<script>alert(1)</script>",
          "<![CDATA[x]]>", "<!-- c -->", "<?xml version='1.0'?>", "\x00", "\x1b", "\ud800", "\udfff", "\ufffe",
          "\uffff", "\t", "\n", "\r", "\u2028", "\U0001f600", "\u202e", "ü"]
raw_text = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(MARKUP)), max_size=12).map("".join)
clean_text = raw_text.map(strip_xml_forbidden)


def test_the_strategy_mirrors_the_ingest_rule() -> None:
    assert strip_xml_forbidden("a\x00b\x08c\tde\nf\rg\x1fh\ud800i\udfffj\ufffek\uffffl\x7f") == \
        "abc\tde\nf\rghijkl\x7f"


def item_with_text(headline: str, standfirst: str, caption: str, body: str):
    document = seed_document(2)
    document["headlines"][0]["value"] = headline
    document["descriptions"][0]["value"] = standfirst
    document["associations"][0]["descriptions"][0]["value"] = caption
    for entry in document["bodies"]:
        # As on ingest: HTML bodies are sanitised with nh3.
        entry["value"] = nh3.clean(body) if entry["contentType"] == "text/html" else body
    return view(dataclasses.replace(seed_v2_revision(), document=document))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headline=clean_text, standfirst=clean_text, caption=clean_text, body=clean_text)
def test_any_text_gives_well_formed_output_and_valid_newsml(headline, standfirst, caption, body) -> None:
    item = item_with_text(headline, standfirst, caption, body)
    feed = feed_view()
    outputs = {fmt: render(feed, [item]) for fmt, render in RENDERERS.items()}
    outputs["atom-entry"] = render_atom_entry(feed, item)
    outputs["newsml-item"] = render_newsml_item(feed, item)
    outputs["newsml-bare"] = render_newsml_news_item(feed, item)

    for name, data in outputs.items():
        if name == "jsonfeed":
            orjson.loads(data)
        else:
            parse_xml(data)  # raises on anything not well-formed
    for name in ("newsml", "newsml-item", "newsml-bare"):
        assert newsml_errors(outputs[name]) == [], name

    # What went in comes out, exactly, where the format keeps the text as is (blank text is absent).
    if headline.strip():
        assert read_newsml(outputs["newsml"])[0].title == headline
        assert read_json_feed(outputs["jsonfeed"])[0].title == headline
        assert parse_xml(outputs["atom"]).findtext(f"{{{ATOM_NS}}}entry/{{{ATOM_NS}}}title") == headline
    if standfirst.strip():
        assert read_newsml(outputs["newsml"])[0].summary == standfirst
        assert read_json_feed(outputs["jsonfeed"])[0].summary == standfirst
    if caption.strip():
        assert read_newsml(outputs["newsml"])[0].captions[0] == caption
        assert read_json_feed(outputs["jsonfeed"])[0].captions[0] == caption
    article = newsml_items(outputs["newsml"])[0]
    assert article.find(f"{nar('contentSet/inlineXML')}/{{{XHTML_NS}}}html") is not None


@settings(max_examples=40, deadline=None)
@given(headline=clean_text.filter(lambda text: text.strip() != ""), caption=clean_text)
def test_feedparser_reads_any_headline_back(headline, caption) -> None:
    item = item_with_text(headline, "Standfirst", caption, "<p>Body</p>")
    feed = feed_view()
    for read, render in ((read_atom, render_atom), (read_rss, render_rss)):
        [entry] = read(render(feed, [item]))  # asserts bozo == 0
        assert entry.id == item.uri


# --- determinism and size ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_same_input_gives_identical_bytes(fmt: str) -> None:
    def build():
        return RENDERERS[fmt](feed_view(next_url="https://feeds.example.org/next"),
                              [view(seed_v2_revision()), view(killed_revision())])

    first = build()
    assert build() == first
    assert RENDERERS[fmt](feed_view(next_url="https://feeds.example.org/next"),
                          [view(seed_v2_revision()), view(killed_revision())]) == first


def test_single_item_documents_are_deterministic() -> None:
    for render in (render_atom_entry, render_newsml_item, render_newsml_news_item):
        assert render(feed_view(), view(seed_v2_revision())) == render(feed_view(), view(seed_v2_revision()))


def test_output_depends_on_the_build_time_only_through_the_feed_view() -> None:
    later = feed_view(built_at=feed_view().built_at.replace(hour=13))
    for fmt in ("atom", "rss", "newsml"):
        assert RENDERERS[fmt](feed_view(), [view(seed_v2_revision())]) != \
            RENDERERS[fmt](later, [view(seed_v2_revision())])


def test_fifty_item_feed_in_all_formats() -> None:
    items = many_items(50)
    feed = feed_view()
    assert len(read_atom(render_atom(feed, items))) == 50
    assert len(read_rss(render_rss(feed, items))) == 50
    newsml = render_newsml_message(feed, items)
    assert newsml_errors(newsml) == []
    assert len(read_newsml(newsml)) == 50
    assert len(newsml_items(newsml)) == 150  # each article with its two pictures
    assert len(read_json_feed(render_json_feed(feed, items))) == 50
    assert [item.id for item in read_json_feed(render_json_feed(feed, items))] == [i.uri for i in items]
