"""RSS and Atom documents are valid (issue 12), by the offline checks of :mod:`feed_validation`: RFC
4287's schema and rules for Atom, the RSS 2.0 specification's for RSS, and the W3C validator's errors
when a copy is at hand (``SYNDICATE_FEEDVALIDATOR``). First the checks themselves are shown to catch
what they must; then every kind of document the renderers make is checked."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from feed_validation import atom_errors, errors_for, json_feed_errors, rss_errors, w3c_available
from render_helpers import (
    INGESTED_V1,
    feed_view,
    item_url,
    killed_revision,
    many_items,
    revision_from_document,
    seed_document,
    seed_v1_revision,
    seed_v2_revision,
    view,
)

from server.domain.articles import NEW
from server.feeds.render import ItemView, render_atom, render_atom_entry, render_json_feed, render_rss

ATOM_HEAD = b'<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
GOOD_ENTRY = (b"<entry><id>urn:x:1</id><title>t</title><updated>2024-01-01T00:00:00Z</updated>"
              b'<author><name>a</name></author><link href="https://e.example/1"/></entry>')


def atom(feed_meta: bytes, *entries: bytes) -> bytes:
    return ATOM_HEAD + feed_meta + b"".join(entries) + b"</feed>"


META = b"<id>https://e.example/f</id><title>f</title><updated>2024-01-01T00:00:00Z</updated>"


@pytest.mark.parametrize(("document", "says"), [
    (atom(META, GOOD_ENTRY), None),
    (atom(b"<title>f</title><updated>2024-01-01T00:00:00Z</updated>", GOOD_ENTRY), "schema"),  # no id
    (atom(META.replace(b"2024-01-01T00:00:00Z", b"yesterday"), GOOD_ENTRY), "schema"),
    (atom(META.replace(b"2024-01-01T00:00:00Z", b"2024-01-01T00:00:00"), GOOD_ENTRY), "RFC 3339"),
    (atom(META, GOOD_ENTRY.replace(b"<author><name>a</name></author>", b"")), "no atom:author"),
    (atom(META, GOOD_ENTRY.replace(b'<link href="https://e.example/1"/>', b"")), "neither atom:content"),
    (atom(META, GOOD_ENTRY.replace(b"</entry>", b'<link href="https://e.example/2"/></entry>')), "alternate"),
    (atom(META, GOOD_ENTRY.replace(b"</entry>", b'<content src="https://e.example/x" type="image/png"/></entry>')),
     "summary"),
    (atom(META.replace(b"https://e.example/f", b"feed-1"), GOOD_ENTRY), "absolute IRI"),
    (atom(META, GOOD_ENTRY.replace(b"<entry>", b'<entry xml:lang="not a tag">')), "schema"),
    (atom(META, GOOD_ENTRY.replace(b"</entry>", b'<category term=""/></entry>')), "term"),
    (atom(META, GOOD_ENTRY.replace(b"</entry>", b"<foo>x</foo></entry>")), "schema"),  # an Atom element? no: unqualified
    (b"<feed", "well-formed"),
])
def test_the_atom_checks_catch_what_they_must(document, says):
    errors = atom_errors(document)
    if says is None:
        assert errors == []
    else:
        assert errors and any(says in e for e in errors), errors


RSS_OK = (b'<rss version="2.0"><channel><title>t</title><link>https://e.example/</link><description>d</description>'
          b"<item><title>i</title><guid isPermaLink=\"false\">urn:x:1</guid>"
          b"<pubDate>Fri, 04 Nov 2022 09:55:00 +0000</pubDate></item></channel></rss>")


@pytest.mark.parametrize(("change", "says"), [
    (None, None),
    ((b"<title>t</title>", b""), "no title"),
    ((b'version="2.0"', b'version="0.91"'), "not <rss"),
    ((b"<title>i</title>", b"<title>i</title><title>j</title>"), "more than one <title>"),
    ((b"<title>i</title>", b"<bogus>x</bogus>"), "not an RSS 2.0 element"),
    ((b"Fri, 04 Nov 2022", b"Fri, 04 Nov 22"), "4-digit year"),
    ((b"Fri, 04 Nov 2022 09:55:00 +0000", b"2022-11-04T09:55:00Z"), "RFC 822"),
    ((b' isPermaLink="false"', b""), "not a URL"),
    ((b"<title>i</title>", b""), None),  # a guid and a date, but neither title nor description: caught below
    ((b"<link>https://e.example/</link>", b"<link>/relative</link>"), "not a URL"),
    ((b"<description>d</description>", b"<description>d</description><language>en_GB</language>"),
     "language tag"),
])
def test_the_rss_checks_catch_what_they_must(change, says):
    document = RSS_OK if change is None else RSS_OK.replace(*change)
    errors = rss_errors(document)
    if change == (b"<title>i</title>", b""):
        assert any("neither a title nor a description" in e for e in errors)
    elif says is None:
        assert errors == []
    else:
        assert errors and any(says in e for e in errors), errors


def arabic_item() -> ItemView:
    document = seed_document(1)
    document.update(uri=document["uri"] + "-ar", language="ar",
                    headlines=[{"role": "main", "value": "عنوان"}],
                    bodies=[{"role": "main", "contentType": "text/html", "value": '<p dir="rtl">نص</p>'}])
    revision = revision_from_document(document, version=1, kind=NEW, signal=None, first_created=INGESTED_V1,
                                      ingested_at=INGESTED_V1)
    return ItemView.from_revision(revision, item_url(revision))


def plain_text_item() -> ItemView:
    document = seed_document(1)
    document.update(uri=document["uri"] + "-plain", bodies=[{"role": "main", "contentType": "text/plain",
                                                             "value": "One.\n\nTwo & <three>."}])
    document.pop("associations", None)
    revision = revision_from_document(document, version=1, kind=NEW, signal=None, first_created=INGESTED_V1,
                                      ingested_at=INGESTED_V1)
    return ItemView.from_revision(revision, item_url(revision))


ARCHIVE = dict(archive=True, hub_url=None, next_url=None, current_url="https://feeds.example.org/feeds/world/atom",
               prev_archive_url="https://feeds.example.org/feeds/world/atom?archive=1",
               next_archive_url="https://feeds.example.org/feeds/world/atom?archive=3",
               self_url="https://feeds.example.org/feeds/world/atom?archive=2")
DOCUMENTS = {
    "seed v1": ({}, lambda: [view(seed_v1_revision())]),
    "seed v2 (correction)": ({}, lambda: [view(seed_v2_revision())]),
    "a kill": ({}, lambda: [view(killed_revision())]),
    "a purged story": ({}, lambda: [view(killed_revision(keep_document=False))]),
    "no photo rights": ({"include_photos": False}, lambda: [view(seed_v2_revision())]),
    "Arabic in an English feed": ({}, lambda: [arabic_item(), view(seed_v1_revision())]),
    "plain text": ({}, lambda: [plain_text_item()]),
    "empty": ({}, lambda: []),
    "many": ({}, lambda: many_items(30)),
    "an archive page": (ARCHIVE, lambda: [view(seed_v2_revision())]),
    "the head with prev-archive": ({"prev_archive_url": ARCHIVE["prev_archive_url"]}, lambda: [view(seed_v1_revision())]),
    "no language, no description": ({"language": None, "description": ""}, lambda: [view(seed_v1_revision())]),
}


@pytest.mark.parametrize("fmt", ["atom", "rss"])
@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_kind_of_document_is_valid(fmt, name):
    overrides, items = DOCUMENTS[name]
    feed = feed_view(**overrides)
    if fmt == "rss":
        feed = dataclasses.replace(feed, self_url=feed.self_url.replace("atom", "rss"))
    body = (render_atom if fmt == "atom" else render_rss)(feed, items())
    assert errors_for(fmt, body, feed.self_url) == []


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_kind_of_document_is_a_valid_json_feed(name):
    overrides, items = DOCUMENTS[name]
    feed = feed_view(**overrides)
    feed = dataclasses.replace(feed, self_url=feed.self_url.replace("atom", "json"))
    assert json_feed_errors(render_json_feed(feed, items())) == []


def test_the_json_feed_schema_catches_what_it_must():
    good = orjson.loads(render_json_feed(feed_view(), [view(seed_v1_revision())]))
    assert json_feed_errors(orjson.dumps(good)) == []
    for broken, says in ((lambda d: d.pop("title"), "'title' is a required property"),
                         (lambda d: d["items"][0].pop("id"), "'id' is a required property"),
                         (lambda d: d.update(colour="red"), "colour"),
                         (lambda d: d["items"][0].update(date_published="yesterday"), "is not a 'date-time'")):
        document = orjson.loads(orjson.dumps(good))
        broken(document)
        assert any(says in e for e in json_feed_errors(orjson.dumps(document))), says


@pytest.mark.parametrize("item", [lambda: view(seed_v2_revision()), lambda: view(killed_revision()), arabic_item])
def test_entry_documents_are_valid(item):
    assert errors_for("atom", render_atom_entry(feed_view(), item())) == []


def test_which_checks_ran():
    """Say in the test log whether the W3C validator took part (it cannot be installed from PyPI)."""
    print("W3C feed validator:", "used" if w3c_available() else "not installed (SYNDICATE_FEEDVALIDATOR unset)")
