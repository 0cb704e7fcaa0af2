"""NewsML-G2 2.35 (Power conformance) documents, built with lxml's element API.

An article at a revision becomes one text ``newsItem``: guid = the ninjs uri, version = the server's
revision number, ``catalogRef`` to the IPTC G2 catalog (it defines every scheme alias used here:
ninat, stat, sig, irel, drol, cpnat, medtop), ``rightsInfo``, ``itemMeta`` (itemClass ninat:text, the
publisher as provider, versionCreated, firstCreated, pubStatus stat:usable/withheld/canceled,
sig:update or sig:correction, the edNote, and one ``link rel="irel:associatedWith"`` per photo),
``contentMeta`` (language, subjects, places as ``subject type="cpnat:geoArea"`` since ninjs places are
what a story is about, not where it was written, slugline, headline, by, creditline, the standfirst as
``description role="drol:summary"``) and a ``contentSet`` whose ``inlineXML`` holds the body as XHTML
(``html/head/title`` + ``html/body``, in the XHTML namespace). The sanitised HTML body is parsed with
lxml.html and copied element by element into XHTML; a correction note opens the body as a visible
paragraph, like in the other formats, while the machine-readable side is ``sig:correction``.

Each photo is a picture ``newsItem`` of its own (itemClass ninat:picture; guid = the photo's uri;
version = the article's revision, so that a changed caption is a new version of the picture item;
``remoteContent`` with href/contenttype/width/height; caption as ``description role="drol:caption"``;
the credit as ``creditline``), travelling in the same ``newsMessage`` right after its article.

A withdrawn story is ``stat:canceled`` with the withdrawal notice as an edNote: no contentSet, no
pictures, no links to them.

The single-item document (:func:`render_newsml_item`, for GET /items/{id}/newsml) is a ``newsMessage``
holding the article and its picture items: a bare ``newsItem`` cannot carry the pictures' captions and
credits (its links only point at other items). Serve it as :data:`NEWSML_MESSAGE_MEDIA_TYPE`. For a
client that asks for a bare item (``Accept: application/vnd.iptc.g2.newsitem+xml``),
:func:`render_newsml_news_item` gives the article ``newsItem`` alone (its links still name the
pictures' guids), served as :data:`NEWSML_ITEM_MEDIA_TYPE`. Both media types are the ones IPTC
registered with IANA for NewsML-G2.

A newsMessage must hold at least one item (the schema's ``itemSet``), so an empty feed page raises
:class:`EmptyNewsMessageError` rather than produce an invalid document.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import urlsplit

import lxml.html
from lxml import etree

from server.core.text import single_line
from server.core.values import iso
from server.domain.articles import CANCELED, CORRECTION, UPDATE, WITHHELD
from server.feeds.render.memo import FragmentMemo
from server.feeds.render.view import CORRECTION_NOTE_CLASS, FeedView, ItemView, Photo, Subject, photos_to_show

NEWSML_MESSAGE_MEDIA_TYPE = "application/vnd.iptc.g2.newsmessage+xml"
NEWSML_ITEM_MEDIA_TYPE = "application/vnd.iptc.g2.newsitem+xml"

NAR_NS = "http://iptc.org/std/nar/2006-10-01/"
XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
IPTC_CATALOG = "http://www.iptc.org/std/catalog/catalog.IPTC-G2-Standards_38.xml"
STANDARD, STANDARD_VERSION, CONFORMANCE = "NewsML-G2", "2.35", "power"

PUB_STATUS_QCODES = {CANCELED: "stat:canceled", WITHHELD: "stat:withheld"}  # anything else: stat:usable
SIGNAL_QCODES = {CORRECTION: "sig:correction", UPDATE: "sig:update"}
PHOTO_LINK_REL = "irel:associatedWith"
# Concept URIs of IPTC vocabularies, written as QCodes with the catalog's scheme alias.
IPTC_SCHEME_ALIASES = {
    "http://cv.iptc.org/newscodes/mediatopic/": "medtop",
    "http://cv.iptc.org/newscodes/subjectcode/": "subj",
    "http://cv.iptc.org/newscodes/genre/": "genre",
}

_XS_LANGUAGE = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
_LOWER_XML_NAME = re.compile(r"[a-z_][a-z0-9._-]*")
_HTML_PARSER = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True)
_PLAIN_HTML_PARSER = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True)
_LOOKS_LIKE_FULL_HTML = re.compile(rb"^\s*<(?:html|!doctype)", re.I).match  # as lxml.html decides it


class EmptyNewsMessageError(ValueError):
    """The schema requires at least one item in a newsMessage's itemSet: an empty feed page has no
    NewsML-G2 form. Answer it without a body instead (e.g. 204 No Content)."""


def render_newsml_message(feed: FeedView, items: list[ItemView]) -> bytes:
    """A ``newsMessage`` with every article (and its pictures) of the feed page; raises
    :class:`EmptyNewsMessageError` for no items."""
    if not items:
        raise EmptyNewsMessageError("a NewsML-G2 newsMessage must hold at least one item")
    message = _nar("newsMessage", nsmap={None: NAR_NS})
    header = etree.SubElement(message, _tag("header"))
    _text_child(header, "sent", iso(feed.built_at))
    etree.SubElement(header, _tag("catalogRef"), href=IPTC_CATALOG)
    _text_child(header, "sender", urlsplit(feed.self_url).hostname or feed.name)
    _text_child(header, "transmitId", feed.render_id)
    item_set = etree.SubElement(message, _tag("itemSet"))
    for item in items:
        item_set.extend(_MEMO.copies(_memo_key(feed, item), functools.partial(_article_with_pictures, feed, item)))
    return _serialise(message)


def render_newsml_item(feed: FeedView, item: ItemView) -> bytes:
    """The single-item document: a ``newsMessage`` holding the article and its picture items."""
    return render_newsml_message(feed, [item])


def render_newsml_news_item(feed: FeedView, item: ItemView) -> bytes:
    """The article as a bare ``newsItem``: its pictures are only referenced by guid."""
    return _serialise(_article_item(feed, item))


_MEMO = FragmentMemo()


def _memo_key(feed: FeedView, item: ItemView) -> tuple[Any, ...]:
    """Everything an item's newsItems depend on: the item, and the feed's language, name and photo
    choice where the item itself leaves them open."""
    return (item, None if item.language else feed.language, None if item.publisher else feed.name,
            feed.include_photos)


def _article_with_pictures(feed: FeedView, item: ItemView) -> tuple[etree._Element, ...]:
    return (_article_item(feed, item), *(_picture_item(item, photo) for photo in photos_to_show(feed, item)))


def _article_item(feed: FeedView, item: ItemView) -> etree._Element:
    news_item = _item_root(item.uri, item.version, item.language or feed.language)
    _rights_info(news_item, item.copyright_holder, item.usage_terms)

    meta = etree.SubElement(news_item, _tag("itemMeta"))
    etree.SubElement(meta, _tag("itemClass"), qcode="ninat:text")
    _provider(meta, item.publisher or feed.name)
    _text_child(meta, "versionCreated", iso(item.version_created))
    _text_child(meta, "firstCreated", iso(item.first_created))
    etree.SubElement(meta, _tag("pubStatus"), qcode=PUB_STATUS_QCODES.get(item.pub_status, "stat:usable"))
    if item.ed_note:
        _text_child(meta, "edNote", item.ed_note)
    if item.is_tombstone:
        _text_child(meta, "edNote", item.tombstone_notice)
    if item.signal in SIGNAL_QCODES:
        etree.SubElement(meta, _tag("signal"), qcode=SIGNAL_QCODES[item.signal])
    for photo in photos_to_show(feed, item):
        link = etree.SubElement(meta, _tag("link"), rel=PHOTO_LINK_REL, residref=photo.uri,
                                version=str(item.version))
        if photo.headline:
            link.set("title", photo.headline)

    content_meta = etree.SubElement(news_item, _tag("contentMeta"))
    if item.language and _XS_LANGUAGE.fullmatch(item.language):
        etree.SubElement(content_meta, _tag("language"), tag=item.language)
    for subject in item.subjects:
        _subject(content_meta, subject, concept_type=None)
    for place in item.places:
        _subject(content_meta, place, concept_type="cpnat:geoArea")
    if item.slugline:
        _line_child(content_meta, "slugline", item.slugline)
    _text_child(content_meta, "headline", item.headline if item.headline.strip() else item.display_title)
    if item.byline:
        _text_child(content_meta, "by", item.byline)
    if item.copyright_holder:
        _line_child(content_meta, "creditline", item.copyright_holder)
    if item.standfirst:
        _text_child(content_meta, "description", item.standfirst).set("role", "drol:summary")

    if not item.is_tombstone:
        content_set = etree.SubElement(news_item, _tag("contentSet"))
        inline = etree.SubElement(content_set, _tag("inlineXML"), contenttype="application/xhtml+xml")
        inline.append(xhtml_document(item, feed.include_photos))
    return news_item


def _picture_item(item: ItemView, photo: Photo) -> etree._Element:
    news_item = _item_root(photo.uri, item.version, item.language)
    _rights_info(news_item, photo.copyright_holder, None)

    meta = etree.SubElement(news_item, _tag("itemMeta"))
    etree.SubElement(meta, _tag("itemClass"), qcode="ninat:picture")
    _provider(meta, item.publisher or photo.credit or "unknown")
    _text_child(meta, "versionCreated", iso(item.version_created))
    _text_child(meta, "firstCreated", iso(item.first_created))
    etree.SubElement(meta, _tag("pubStatus"), qcode="stat:usable")

    content_meta = etree.SubElement(news_item, _tag("contentMeta"))
    if photo.headline:
        _text_child(content_meta, "headline", photo.headline)
    if photo.credit:
        _text_child(content_meta, "by", photo.credit)
        _line_child(content_meta, "creditline", photo.credit)
    if photo.caption:
        _text_child(content_meta, "description", photo.caption).set("role", "drol:caption")

    content_set = etree.SubElement(news_item, _tag("contentSet"))
    remote = etree.SubElement(content_set, _tag("remoteContent"), href=photo.href)
    if photo.content_type:
        remote.set("contenttype", photo.content_type)
    if photo.width is not None:
        remote.set("width", str(photo.width))
    if photo.height is not None:
        remote.set("height", str(photo.height))
    return news_item


def xhtml_document(item: ItemView, include_photos: bool = True) -> etree._Element:
    """The body as an XHTML ``html`` element, the correction note (if any) as its first paragraph."""
    html = etree.Element(f"{{{XHTML_NS}}}html", nsmap={None: XHTML_NS})
    head = etree.SubElement(html, f"{{{XHTML_NS}}}head")
    etree.SubElement(head, f"{{{XHTML_NS}}}title").text = item.display_title
    body = etree.SubElement(html, f"{{{XHTML_NS}}}body")
    if item.correction_note:
        note = etree.SubElement(body, f"{{{XHTML_NS}}}p", {"class": CORRECTION_NOTE_CLASS})
        etree.SubElement(note, f"{{{XHTML_NS}}}em").text = item.correction_note
    body_html = item.body_for(include_photos)
    if body_html:
        source = body_html.encode("utf-8")
        parsed = _parse_plain_fragment(source)
        if parsed is not None:
            _move_as_xhtml(*parsed, body)
        else:
            fragment = lxml.html.fragment_fromstring(source, create_parent="div", parser=_HTML_PARSER)
            _copy_as_xhtml(fragment, body)
    elif item.body_text:
        for paragraph in item.body_text.split("\n\n"):
            etree.SubElement(body, f"{{{XHTML_NS}}}p").text = paragraph
    return html


def _parse_plain_fragment(html: bytes) -> tuple[etree._Element, str | None] | None:
    """The usual case of a sanitised body, fast: parsed as ``lxml.html.fragment_fromstring(html,
    create_parent=...)`` parses it (the same libxml2 parse, wrapped in html/body the same way, and
    leading text kept only when it is not blank), but with plain elements rather than lxml.html's
    classes, so that it can be renamed into XHTML in place rather than copied. Returns the parsed
    ``body`` element and the leading text, or None when the body is not the usual case: a whole
    document, or names that :func:`_copy_as_xhtml` would change (see :func:`_plain_xml_names`)."""
    if _LOOKS_LIKE_FULL_HTML(html):
        return None
    document = etree.fromstring(b"<html><body>" + html + b"</body></html>", _PLAIN_HTML_PARSER)
    if document is None or document.tag != "html":
        return None
    bodies = [element for element in document if element.tag == "body"]
    if len(bodies) != 1 or not _plain_xml_names(bodies[0]):
        return None
    body = bodies[0]
    return body, body.text if body.text and body.text.strip() else None


def _plain_xml_names(fragment: etree._Element) -> bool:
    """Whether every node under ``fragment`` is an element whose tag and attribute names are already
    what :func:`_copy_as_xhtml` would write (lowercase XML names, no ``xml*`` attribute)."""
    for element in fragment.iterdescendants():
        tag = element.tag
        if not isinstance(tag, str) or not _LOWER_XML_NAME.fullmatch(tag):
            return False
        for attribute in element.attrib:
            if not _LOWER_XML_NAME.fullmatch(attribute) or attribute.startswith("xml"):
                return False
    return True


def _move_as_xhtml(fragment: etree._Element, text: str | None, target: etree._Element) -> None:
    """Put ``text`` and ``fragment``'s children under ``target``, renamed into the XHTML namespace:
    the same elements :func:`_copy_as_xhtml` makes, without building a second tree."""
    fragment.tag = f"{{{XHTML_NS}}}div"  # declares the namespace once, for the descendants to reuse
    for element in fragment.iterdescendants():
        element.tag = f"{{{XHTML_NS}}}{element.tag}"
    _append_text(target, text)
    target.extend(list(fragment))


def _copy_as_xhtml(source: lxml.html.HtmlElement, target: etree._Element) -> None:
    """Copy ``source``'s text and children under ``target`` as XHTML elements. Names that cannot be
    XML names (possible only in broken HTML) become ``span`` elements or are dropped, for attributes;
    so are ``xmlns``/``xml*`` attributes, which would re-namespace the element once serialised."""
    _append_text(target, source.text)
    for child in source:
        if not isinstance(child.tag, str):  # comments and PIs the parser kept
            _append_text(target, child.tail)
            continue
        name = child.tag.lower() if _XML_NAME.fullmatch(child.tag) else "span"
        copy = etree.SubElement(target, f"{{{XHTML_NS}}}{name}")
        for attribute, value in child.attrib.items():
            if _XML_NAME.fullmatch(attribute) and not attribute.lower().startswith("xml"):
                copy.set(attribute.lower(), value)
        _copy_as_xhtml(child, copy)
        copy.tail = child.tail


def _append_text(target: etree._Element, text: str | None) -> None:
    if not text:
        return
    if len(target):
        target[-1].tail = (target[-1].tail or "") + text
    else:
        target.text = (target.text or "") + text


def _item_root(guid: str, version: int, language: str | None) -> etree._Element:
    news_item = _nar("newsItem", nsmap={None: NAR_NS}, guid=guid, version=str(version), standard=STANDARD,
                     standardversion=STANDARD_VERSION, conformance=CONFORMANCE)
    if language and _XS_LANGUAGE.fullmatch(language):
        news_item.set(XML_LANG, language)
    etree.SubElement(news_item, _tag("catalogRef"), href=IPTC_CATALOG)
    return news_item


def _rights_info(parent: etree._Element, holder: str | None, usage_terms: str | None) -> None:
    if not holder and not usage_terms:
        return
    rights = etree.SubElement(parent, _tag("rightsInfo"))
    holder = _single_line(holder or "")
    if holder:
        copyright_holder = etree.SubElement(rights, _tag("copyrightHolder"), literal=holder)
        _line_child(copyright_holder, "name", holder)
    if usage_terms:
        _text_child(rights, "usageTerms", usage_terms)


def _provider(meta: etree._Element, name: str) -> None:
    name = _single_line(name) or "unknown"
    provider = etree.SubElement(meta, _tag("provider"), literal=name)
    _text_child(provider, "name", name)


def _subject(parent: etree._Element, subject: Subject, concept_type: str | None) -> None:
    qcode, literal = _iptc_qcode(subject.uri), _single_line(subject.code or "")
    if not (qcode or subject.uri or literal or _single_line(subject.name)):
        return  # nothing identifies it, and nothing names it
    element = etree.SubElement(parent, _tag("subject"))
    if concept_type:
        element.set("type", concept_type)
    if qcode:
        element.set("qcode", qcode)
    elif subject.uri:
        element.set("uri", subject.uri)
    elif literal:
        element.set("literal", literal)
    _line_child(element, "name", subject.name)


def _iptc_qcode(uri: str | None) -> str | None:
    for prefix, alias in IPTC_SCHEME_ALIASES.items():
        if uri and uri.startswith(prefix) and len(uri) > len(prefix) and "/" not in uri[len(prefix):]:
            return f"{alias}:{uri[len(prefix):]}"
    return None


def _single_line(text: str) -> str:
    """The schema's g2normalizedString allows no tab or newline (``literal``, names, slugline,
    creditline)."""
    return single_line(text)


def _line_child(parent: etree._Element, name: str, text: str | None) -> etree._Element | None:
    """A g2normalizedString element: on one line, and left out when nothing is left of it."""
    line = _single_line(text or "")
    return _text_child(parent, name, line) if line else None


def _text_child(parent: etree._Element, name: str, text: str | None) -> etree._Element:
    child = etree.SubElement(parent, _tag(name))
    child.text = text
    return child


def _tag(name: str) -> str:
    return f"{{{NAR_NS}}}{name}"


def _nar(name: str, nsmap: dict[str | None, str], **attributes: str) -> etree._Element:
    return etree.Element(_tag(name), attributes, nsmap=nsmap)


def _serialise(root: etree._Element) -> bytes:
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)
