"""Shared inputs for the renderer tests: the seed article's two revisions as Revision objects (built
directly from the fixture files, no store), a FeedView, a killed revision, readers for the four
formats, and the XML-1.0 character rule the server applies on ingest."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import feedparser
import lxml.html
import orjson
from conftest import ARTICLES, ROOT, SEED_V1, SEED_V2, SHARED  # noqa: F401  (the paths live in conftest)
from lxml import etree

from server.core.values import parse_iso
from server.domain.articles import CANCELED, CORRECTION, KILL, NEW, USABLE, Revision, article_id_for_uri
from server.feeds.render import FeedView, ItemView

G2_XSD = SHARED / "standards" / "newsml-g2" / "NewsML-G2_2.35-spec-All-Power.xsd"

NAR_NS = "http://iptc.org/std/nar/2006-10-01/"
XHTML_NS = "http://www.w3.org/1999/xhtml"
ATOM_NS = "http://www.w3.org/2005/Atom"
MRSS_NS = "http://search.yahoo.com/mrss/"
SAFE_PARSER = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)

BUILT_AT = datetime(2022, 11, 4, 12, 0, tzinfo=UTC)
INGESTED_V1 = datetime(2022, 11, 4, 9, 55, 3, tzinfo=UTC)
INGESTED_V2 = datetime(2022, 11, 4, 11, 10, 4, tzinfo=UTC)
PUBLISHER = "newsroom"
KILL_REASON = "Legal advice: the figures could not be verified"

# What the server removes on ingest (server/domain/ninjs.py): C0 controls but tab/LF/CR, surrogates, U+FFFE/F.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def strip_xml_forbidden(text: str) -> str:
    return _XML_FORBIDDEN.sub("", text)


@cache
def _load(path: Path) -> bytes:
    return path.read_bytes()


def seed_document(version: int) -> dict[str, Any]:
    """A fresh copy of the fixture's ninjs document (safe to modify)."""
    return orjson.loads(_load(SEED_V1 if version == 1 else SEED_V2))


def revision_from_document(document: dict[str, Any], *, version: int, kind: str, signal: str | None,
                           first_created: datetime, ingested_at: datetime,
                           pub_status: str = USABLE, kill_reason: str | None = None,
                           keep_document: bool = True) -> Revision:
    return Revision(
        article_id=article_id_for_uri(document["uri"]),
        uri=document["uri"],
        version=version,
        kind=kind,
        signal=signal,
        first_created=first_created,
        version_created=parse_iso(document["versionCreated"]),
        ingested_at=ingested_at,
        pub_status=pub_status,
        embargoed_until=None,
        ed_note=document.get("edNote"),
        publisher=PUBLISHER,
        content_hash="sha256:" + "0" * 64,
        document=document if keep_document else None,
        kill_reason=kill_reason,
    )


def seed_v1_revision() -> Revision:
    document = seed_document(1)
    return revision_from_document(document, version=1, kind=NEW, signal=None,
                                  first_created=parse_iso(document["firstCreated"]), ingested_at=INGESTED_V1)


def seed_v2_revision() -> Revision:
    first_created = seed_v1_revision().first_created  # kept from version 1
    return revision_from_document(seed_document(2), version=2, kind=CORRECTION, signal=CORRECTION,
                                  first_created=first_created, ingested_at=INGESTED_V2)


def killed_revision(keep_document: bool = True) -> Revision:
    v2 = seed_v2_revision()
    return dataclasses.replace(
        v2, version=3, kind=KILL, signal=None, pub_status=CANCELED, kill_reason=KILL_REASON,
        version_created=v2.version_created + timedelta(hours=1), ingested_at=v2.ingested_at + timedelta(hours=1),
        document=v2.document if keep_document else None)


def item_url(rev: Revision) -> str:
    return f"https://feeds.example.org/items/{rev.article_id}"


def view(rev: Revision) -> ItemView:
    return ItemView.from_revision(rev, item_url(rev))


def feed_view(**overrides: Any) -> FeedView:
    values: dict[str, Any] = dict(
        name="world",
        title="Example News: World",
        description="World news from Example News",
        language="en",
        self_url="https://feeds.example.org/feeds/world.atom",
        alternate_url="https://news.example.com/world",
        hub_url="https://hub.example.org/",
        built_at=BUILT_AT,
        render_id="render-0001",
    )
    values.update(overrides)
    return FeedView(**values)


def many_items(count: int) -> list[ItemView]:
    """``count`` distinct articles made from the seed (different uri, times and headline)."""
    items = []
    for index in range(count):
        document = seed_document(2)
        document["uri"] = f"{document['uri']}-{index}"
        document["headlines"][0]["value"] = f"Story number {index}"
        first = parse_iso(document["firstCreated"]) + timedelta(minutes=index)
        rev = revision_from_document(document, version=1 + index % 3, kind=NEW, signal=None,
                                     first_created=first, ingested_at=first)
        items.append(view(rev))
    return items


def seed_paragraphs(version: int) -> list[str]:
    """The text of each <p> of the fixture's HTML body."""
    body = next(b["value"] for b in seed_document(version)["bodies"] if b["contentType"] == "text/html")
    fragment = lxml.html.fragment_fromstring(body, create_parent="div")
    return [p.text_content() for p in fragment.iter("p")]


@cache
def g2_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(G2_XSD), SAFE_PARSER))


def newsml_errors(data: bytes) -> list[str]:
    document = etree.fromstring(data, SAFE_PARSER)
    schema = g2_schema()
    if schema.validate(document):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


def parse_xml(data: bytes) -> etree._Element:
    return etree.fromstring(data, SAFE_PARSER)


# --- reading the four formats back --------------------------------------------------------------

@dataclasses.dataclass
class ReadBack:
    """What a reader of one format sees of one article, for field-by-field comparison."""

    id: str
    title: str
    summary: str | None
    paragraphs: list[str]  # the body's <p> texts, without the correction note
    correction_note: str | None  # the visible note opening the body
    captions: list[str]
    credits: list[str]
    version: int | None
    signal: str | None


def html_paragraphs(html: str) -> tuple[list[str], str | None]:
    """(texts of the body's <p>, text of the correction-note paragraph or None) of an HTML string."""
    fragment = lxml.html.fragment_fromstring(html, create_parent="div")
    paragraphs, note = [], None
    for p in fragment.iter("p"):
        if p.get("class") == "correction":
            note = p.text_content()
        else:
            paragraphs.append(p.text_content())
    return paragraphs, note


def _media_texts(entry_element: etree._Element, name: str) -> list[str]:
    return [e.text for e in entry_element.iterfind(f"{{{MRSS_NS}}}content/{{{MRSS_NS}}}{name}")]


def read_feedparser_entries(data: bytes, entry_tag: str) -> list[ReadBack]:
    """Atom (entry_tag "{Atom}entry") or RSS ("item"): feedparser for what it exposes, lxml for the
    Media RSS captions (feedparser folds media:description into the entry's own summary)."""
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    elements = list(parse_xml(data).iter(entry_tag))
    assert len(elements) == len(parsed.entries)
    read = []
    for entry, element in zip(parsed.entries, elements, strict=True):
        html = entry.content[0].value if entry.get("content") else ""
        paragraphs, note = html_paragraphs(html) if html else ([], None)
        read.append(ReadBack(
            id=entry.id, title=entry.title, summary=entry.get("summary"), paragraphs=paragraphs,
            correction_note=note, captions=_media_texts(element, "description"),
            credits=[credit.get("content") for credit in entry.get("media_credit", [])],
            version=int(entry.syndicate_version), signal=entry.get("syndicate_signal"),
        ))
    return read


def read_atom(data: bytes) -> list[ReadBack]:
    return read_feedparser_entries(data, f"{{{ATOM_NS}}}entry")


def read_rss(data: bytes) -> list[ReadBack]:
    return read_feedparser_entries(data, "item")


def nar(path: str) -> str:
    """'a/b' -> '{NAR}a/{NAR}b' for ElementPath."""
    return "/".join(f"{{{NAR_NS}}}{step}" for step in path.split("/"))


def newsml_items(data: bytes) -> list[etree._Element]:
    root = parse_xml(data)
    if root.tag == f"{{{NAR_NS}}}newsItem":
        return [root]
    return list(root.find(nar("itemSet")))


def read_newsml(data: bytes) -> list[ReadBack]:
    """Article newsItems, with the captions and credits of the picture items they link to."""
    items = newsml_items(data)
    by_guid = {item.get("guid"): item for item in items}
    read = []
    for item in items:
        if item.find(nar("itemMeta/itemClass")).get("qcode") != "ninat:text":
            continue
        pictures = [by_guid[link.get("residref")] for link in item.iterfind(nar("itemMeta/link"))
                    if link.get("rel") == "irel:associatedWith" and link.get("residref") in by_guid]
        body = item.find(f"{nar('contentSet/inlineXML')}/{{{XHTML_NS}}}html/{{{XHTML_NS}}}body")
        paragraphs, note = [], None
        for p in body.iter(f"{{{XHTML_NS}}}p") if body is not None else ():
            text = "".join(p.itertext())
            if p.get("class") == "correction":
                note = text
            else:
                paragraphs.append(text)
        summary = item.find(nar("contentMeta/description") + "[@role='drol:summary']")
        signal = item.find(nar("itemMeta/signal"))
        read.append(ReadBack(
            id=item.get("guid"), title=item.findtext(nar("contentMeta/headline")),
            summary=summary.text if summary is not None else None, paragraphs=paragraphs,
            correction_note=note,
            captions=[p.findtext(nar("contentMeta/description") + "[@role='drol:caption']") for p in pictures],
            credits=[p.findtext(nar("contentMeta/creditline")) for p in pictures],
            version=int(item.get("version")),
            signal=signal.get("qcode").removeprefix("sig:") if signal is not None else None,
        ))
    return read


def read_json_feed(data: bytes) -> list[ReadBack]:
    read = []
    for item in orjson.loads(data)["items"]:
        paragraphs, note = html_paragraphs(item["content_html"]) if item.get("content_html") else ([], None)
        extension = item["_syndicate"]
        photos = extension.get("photos", [])
        read.append(ReadBack(
            id=item["id"], title=item["title"], summary=item.get("summary"), paragraphs=paragraphs,
            correction_note=note, captions=[p["caption"] for p in photos], credits=[p["credit"] for p in photos],
            version=extension["version"], signal=extension["signal"],
        ))
    return read
