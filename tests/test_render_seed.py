"""The seed article (v1 and its v2 correction) read back field by field from all four formats, and the
view built from its revisions."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from lxml import etree
from render_helpers import (
    ReadBack,
    feed_view,
    read_atom,
    read_json_feed,
    read_newsml,
    read_rss,
    seed_document,
    seed_paragraphs,
    seed_v1_revision,
    seed_v2_revision,
    view,
)

from server.feeds.render import (
    render_atom,
    render_json_feed,
    render_newsml_item,
    render_newsml_message,
    render_rss,
)

FORMATS: dict[str, tuple[Callable, Callable[[bytes], list[ReadBack]]]] = {
    "atom": (render_atom, read_atom),
    "rss": (render_rss, read_rss),
    "newsml": (render_newsml_message, read_newsml),
    "jsonfeed": (render_json_feed, read_json_feed),
}
REVISIONS = {1: seed_v1_revision, 2: seed_v2_revision}


def expected(version: int) -> dict:
    document = seed_document(version)
    descriptions = {d["role"]: d["value"] for d in document["descriptions"]}
    pictures = [a for a in document["associations"] if a["type"] == "picture"]
    return {
        "uri": document["uri"],
        "headline": document["headlines"][0]["value"],
        "standfirst": descriptions["summary"],
        "correction": descriptions.get("correction"),
        "captions": [p["descriptions"][0]["value"] for p in pictures],
        "credits": [p["by"] for p in pictures],
        "paragraphs": seed_paragraphs(version),
        "ed_note": document["edNote"],
    }


def render_one(fmt: str, version: int) -> tuple[bytes, ReadBack]:
    render, read = FORMATS[fmt]
    data = render(feed_view(), [view(REVISIONS[version]())])
    [article] = read(data)
    return data, article


def test_fixture_has_what_the_tests_rely_on() -> None:
    v1, v2 = expected(1), expected(2)
    assert len(v1["paragraphs"]) == len(v2["paragraphs"]) == 13
    assert v1["credits"] == v2["credits"] == ["AP", "AP"]
    assert v1["correction"] is None and v2["correction"]
    assert any("200,00 " in p for p in v1["paragraphs"])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_seed_article_reads_back_field_by_field(fmt: str, version: int) -> None:
    want = expected(version)
    _, article = render_one(fmt, version)

    assert article.id == want["uri"]
    assert article.title == want["headline"]
    assert article.summary == want["standfirst"]
    assert article.paragraphs == want["paragraphs"]
    assert len(article.paragraphs) == 13
    assert article.captions == want["captions"]
    assert article.credits == ["AP", "AP"]
    assert article.version == version


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_correction_is_signalled_noted_and_the_figure_corrected(fmt: str) -> None:
    want = expected(2)
    _, v1 = render_one(fmt, 1)
    _, v2 = render_one(fmt, 2)

    assert v1.signal is None and v1.correction_note is None
    assert v2.signal == "correction"
    assert v2.correction_note == want["correction"]
    assert any("200,00 " in p for p in v1.paragraphs)
    assert any("Nearly 200,000 people" in p for p in v2.paragraphs)
    # The old figure survives only inside the correction note that quotes it, never in the story.
    assert not any("200,00 " in p for p in v2.paragraphs)


@pytest.mark.parametrize("fmt", ["atom", "rss", "jsonfeed"])
@pytest.mark.parametrize("version", [1, 2])
def test_ed_note_reaches_the_partner_in_every_format_but_not_its_readers(fmt: str, version: int) -> None:
    """The machine-translation notice (the seed's edNote) goes to every partner, in the syndicate
    extension for its editors (issue 12: it used to reach only NewsML and ninjs partners), and never
    into the reader-facing content."""
    data, _ = render_one(fmt, version)
    ed_note = expected(version)["ed_note"]
    if fmt == "jsonfeed":
        [item] = orjson.loads(data)["items"]
        assert item["_syndicate"]["edNote"] == ed_note
        assert "Beta V.1.0" not in item.get("content_html", "") + item.get("content_text", "")
    else:
        document = etree.fromstring(data)
        notes = document.findall(".//{urn:x-syndicate:feed-extension:1}edNote")
        assert [n.text for n in notes] == [ed_note]
        content = "".join(e.text or "" for e in document.iter() if etree.QName(e).localname in ("content", "encoded"))
        assert "Beta V.1.0" not in content


@pytest.mark.parametrize("fmt", ["atom", "rss", "jsonfeed", "newsml"])
@pytest.mark.parametrize("tombstone", ["killed", "killed-document-dropped", "body-dropped"])
def test_a_tombstones_ed_note_reaches_the_partner_in_every_format(fmt: str, tombstone: str) -> None:
    """A kill's editorial note (a CMS's "remove at once: legal", here the seed's note kept by the kill) is
    for the partner's editors like any other: a tombstone carries it in every format, beside its notice."""
    import dataclasses

    from render_helpers import killed_revision, nar, newsml_items

    revision = (dataclasses.replace(seed_v2_revision(), document=None) if tombstone == "body-dropped"
                else killed_revision(keep_document=tombstone == "killed"))
    ed_note = expected(2)["ed_note"]
    assert revision.ed_note == ed_note
    item = view(revision)
    assert item.is_tombstone
    data = FORMATS[fmt][0](feed_view(), [item])
    if fmt == "jsonfeed":
        [entry] = orjson.loads(data)["items"]
        assert entry["_syndicate"]["edNote"] == ed_note
        assert "Beta V.1.0" not in entry.get("content_text", "") + entry.get("summary", "")
    elif fmt == "newsml":
        notes = [e.text for e in newsml_items(data)[0].iterfind(nar("itemMeta/edNote"))]
        assert notes == [ed_note, item.tombstone_notice]
    else:
        notes = etree.fromstring(data).findall(".//{urn:x-syndicate:feed-extension:1}edNote")
        assert [n.text for n in notes] == [ed_note]


@pytest.mark.parametrize("version", [1, 2])
def test_ed_note_goes_to_newsml_ed_note(version: int) -> None:
    from render_helpers import nar, newsml_items

    data = render_newsml_item(feed_view(), view(REVISIONS[version]()))
    article = newsml_items(data)[0]
    assert [e.text for e in article.iterfind(nar("itemMeta/edNote"))] == [expected(version)["ed_note"]]
    # ... and only there: not in the reader-facing body.
    body = article.find(nar("contentSet/inlineXML"))
    assert "Beta V.1.0" not in "".join(body.itertext())


def test_view_from_revisions() -> None:
    v1, v2 = view(seed_v1_revision()), view(seed_v2_revision())
    want = expected(2)
    assert (v1.version, v1.kind, v1.signal) == (1, "new", None)
    assert (v2.version, v2.kind, v2.signal) == (2, "correction", "correction")
    assert v2.first_created == v1.first_created
    assert v2.version_created > v1.version_created
    assert v2.headline == want["headline"] and v2.standfirst == want["standfirst"]
    assert v2.correction_note == want["correction"] and v1.correction_note is None
    assert v2.ed_note == want["ed_note"]
    assert v2.language == "en" and v2.slugline == "russia-mobilisation-convicts"
    assert v2.link == want["uri"] and v2.permalink == want["uri"]
    assert v2.item_url.endswith(v2.article_id)
    assert [s.name for s in v2.subjects] == ["armed conflict", "Russia-Ukraine war"]
    assert v2.subjects[0].uri == "http://cv.iptc.org/newscodes/mediatopic/16000000"
    assert v2.subjects[1].code == "russia-ukraine-war"
    assert [p.name for p in v2.places] == ["Russia", "Ukraine"]
    assert [p.caption for p in v2.photos] == want["captions"]
    first = v2.photos[0]
    assert (first.href, first.content_type, first.width, first.height) == (
        "https://media.news.example.com/2022/11/04/rostov-recruits.jpg", "image/jpeg", 1200, 800)
    assert first.uri == "https://media.news.example.com/2022/11/04/rostov-recruits"
    assert first.credit == "AP" and first.copyright_holder == "The Associated Press"
    assert v2.body_html.count("<p>") == 13 and "Nearly 200,000" in v2.body_text
    assert v2.has_content and not v2.withdrawn


def test_largest_rendition_is_chosen_when_none_is_original() -> None:
    import dataclasses

    document = seed_document(2)
    document["associations"][0]["renditions"] = [
        {"name": "thumb", "href": "https://m.example/t.jpg", "contentType": "image/jpeg", "width": 120,
         "height": 80},
        {"name": "large", "href": "https://m.example/l.jpg", "contentType": "image/jpeg", "width": 2400,
         "height": 1600},
        {"name": "web", "href": "https://m.example/w.jpg", "contentType": "image/jpeg", "width": 800,
         "height": 533},
    ]
    rev = dataclasses.replace(seed_v2_revision(), document=document)
    assert view(rev).photos[0].href == "https://m.example/l.jpg"
