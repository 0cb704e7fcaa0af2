"""Per-entry language and text direction (issue 12): an Arabic article in an English feed.

Atom entries carry ``xml:lang`` of the article's language, not the feed's; RSS items ``dc:language``;
JSON Feed items ``language``; a right-to-left story's HTML is wrapped in ``<div dir="rtl">`` and the
``dir`` attributes the CMS sent survive ingest and every format. Renderer tests on a FeedView whose
language is English, then the same article through the HTTP API into every feed.
"""

from __future__ import annotations

import orjson
import pytest
from conftest import AUTH
from lxml import etree
from render_helpers import (
    ATOM_NS,
    INGESTED_V1,
    SAFE_PARSER,
    feed_view,
    item_url,
    newsml_errors,
    revision_from_document,
    seed_document,
)

from server.domain.articles import NEW
from server.feeds.render import ItemView, render_atom, render_atom_entry, render_json_feed, render_rss
from server.feeds.render.view import language_tag, text_direction

XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DC_NS = "http://purl.org/dc/elements/1.1/"
ARABIC_HEADLINE = "محكمة تدين متهمين في قضية جرائم خطيرة"
ARABIC_BODY = ('<p dir="rtl">قالت المحكمة إن المتهمين أدينوا.</p>'
               '<p>اقتباس: <span dir="ltr" lang="en">"serious crimes"</span></p>')


def arabic_document(uri_suffix: str = "-ar") -> dict:
    document = seed_document(1)
    document["uri"] += uri_suffix
    document["language"] = "ar"
    document["headlines"] = [{"role": "main", "value": ARABIC_HEADLINE}]
    document["bodies"] = [{"role": "main", "contentType": "text/html", "value": ARABIC_BODY}]
    document.pop("associations", None)
    return document


def arabic_item() -> ItemView:
    revision = revision_from_document(arabic_document(), version=1, kind=NEW, signal=None,
                                      first_created=INGESTED_V1, ingested_at=INGESTED_V1)
    return ItemView.from_revision(revision, item_url(revision))


def english_item() -> ItemView:
    revision = revision_from_document(seed_document(1), version=1, kind=NEW, signal=None,
                                      first_created=INGESTED_V1, ingested_at=INGESTED_V1)
    return ItemView.from_revision(revision, item_url(revision))


@pytest.mark.parametrize(("tag", "valid", "direction"), [
    ("ar", True, "rtl"), ("ar-EG", True, "rtl"), ("he", True, "rtl"), ("fa-IR", True, "rtl"), ("ur", True, "rtl"),
    ("az-Arab", True, "rtl"), ("ku-Latn", True, None), ("en", True, None), ("en-GB", True, None),
    ("pt-BR", True, None), ("", False, None), ("english language", False, None), ("ar\n", False, None),
    ("toolongtag", False, None), ("en_GB", False, None),
])
def test_language_tags_and_direction(tag, valid, direction):
    assert (language_tag(tag) == tag) is valid
    if valid:
        assert text_direction(tag) == direction


def test_atom_entries_carry_the_articles_language_not_the_feeds():
    feed = feed_view(language="en")
    root = etree.fromstring(render_atom(feed, [arabic_item(), english_item()]), SAFE_PARSER)
    assert root.get(XML_LANG) == "en"
    arabic, english = root.findall(f"{{{ATOM_NS}}}entry")
    assert arabic.get(XML_LANG) == "ar" and english.get(XML_LANG) == "en"
    assert arabic.findtext(f"{{{ATOM_NS}}}title") == ARABIC_HEADLINE
    content = arabic.findtext(f"{{{ATOM_NS}}}content")
    assert content.startswith('<div dir="rtl" lang="ar">') and '<p dir="rtl">' in content
    assert '<span dir="ltr" lang="en">' in content
    assert "dir=" not in english.findtext(f"{{{ATOM_NS}}}content")[:200]
    entry = etree.fromstring(render_atom_entry(feed, arabic_item()), SAFE_PARSER)
    assert entry.get(XML_LANG) == "ar"  # the standalone entry document keeps the entry's own language


def test_rss_items_and_json_feed_items_carry_the_articles_language():
    feed = feed_view(language="en")
    channel = etree.fromstring(render_rss(feed, [arabic_item(), english_item()]), SAFE_PARSER).find("channel")
    assert channel.findtext("language") == "en"
    arabic, english = channel.findall("item")
    assert arabic.findtext(f"{{{DC_NS}}}language") == "ar" and english.findtext(f"{{{DC_NS}}}language") == "en"
    encoded = arabic.findtext("{http://purl.org/rss/1.0/modules/content/}encoded")
    assert encoded.startswith('<div dir="rtl" lang="ar">') and '<p dir="rtl">' in encoded
    document = orjson.loads(render_json_feed(feed, [arabic_item(), english_item()]))
    assert document["language"] == "en"
    assert [item["language"] for item in document["items"]] == ["ar", "en"]
    assert document["items"][0]["content_html"].startswith('<div dir="rtl" lang="ar">')


def test_a_malformed_language_is_stated_nowhere():
    document = arabic_document()
    document["language"] = "not a language"
    revision = revision_from_document(document, version=1, kind=NEW, signal=None,
                                      first_created=INGESTED_V1, ingested_at=INGESTED_V1)
    item = ItemView.from_revision(revision, item_url(revision))
    root = etree.fromstring(render_atom(feed_view(language="en"), [item]), SAFE_PARSER)
    assert root.find(f"{{{ATOM_NS}}}entry").get(XML_LANG) is None
    assert "language" not in orjson.loads(render_json_feed(feed_view(), [item]))["items"][0]


async def test_an_arabic_article_through_the_api_keeps_its_language_and_direction(partner_client):
    response = await partner_client.post("/api/articles", data=orjson.dumps(arabic_document()),
                                         headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    atom = etree.fromstring(await (await partner_client.get("/feeds/latest/atom")).read(), SAFE_PARSER)
    [entry] = atom.findall(f"{{{ATOM_NS}}}entry")
    assert entry.get(XML_LANG) == "ar"
    assert '<p dir="rtl">' in entry.findtext(f"{{{ATOM_NS}}}content")  # kept by the sanitiser
    rss = etree.fromstring(await (await partner_client.get("/feeds/latest/rss")).read(), SAFE_PARSER)
    assert rss.find("channel/item").findtext(f"{{{DC_NS}}}language") == "ar"
    json_feed = orjson.loads(await (await partner_client.get("/feeds/latest/json")).read())
    assert json_feed["items"][0]["language"] == "ar" and 'dir="rtl"' in json_feed["items"][0]["content_html"]
    newsml = await (await partner_client.get("/feeds/latest/newsml")).read()
    assert newsml_errors(newsml) == [] and b'xml:lang="ar"' in newsml and b'dir="rtl"' in newsml
