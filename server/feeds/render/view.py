"""The view model every renderer takes: what one feed and its items look like, read once from revisions.

:class:`ItemView` is built from a stored :class:`~server.domain.articles.Revision` (its normalised ninjs 3.x
``document``) by :meth:`ItemView.from_revision`; :class:`FeedView` describes the feed document around
the items (URLs, build time, render id). Both are frozen and hold everything a renderer needs, so the
renderers do no I/O, read no clock, and give byte-identical output for the same input.

This module also owns the reader-facing wording shared by all formats: the title and notice of a
withdrawn or no-longer-available story (a *tombstone*) and the visible correction-note paragraph; and
what every format says of an item's language and direction: :attr:`ItemView.language_tag` (the
article's own language when it is a well-formed language tag, which Atom puts in the entry's
``xml:lang``, RSS in the item's ``dc:language`` and JSON Feed in the item's ``language``) and
:func:`text_direction` (right-to-left scripts: the reader's HTML is wrapped in ``<div dir="rtl">`` so
that readers lay it out right to left even inside a left-to-right feed; ``dir`` attributes the CMS
sent are kept by the sanitiser).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import lxml.html
import orjson

from server.core.text import xml_safe
from server.domain.articles import CANCELED, Revision
from server.domain.ninjs import without_pictures

# A language tag as xml:lang (XML Schema's xs:language), dc:language and JSON Feed's language take it.
LANGUAGE_TAG = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")
# Languages written right to left (ISO 639 primary subtags), and the right-to-left scripts (ISO 15924)
# a tag may name (``az-Arab``, ``pa-Arab``): Arabic, Hebrew, Syriac, Thaana, N'Ko, Adlam, Mandaic, ...
RTL_LANGUAGES = frozenset({"ar", "arc", "ckb", "dv", "fa", "he", "iw", "ks", "ps", "sd", "syr", "ug", "ur", "yi"})
RTL_SCRIPTS = frozenset({"arab", "hebr", "syrc", "thaa", "nkoo", "adlm", "mand", "samr", "rohg"})
HTML_BODY_TYPES = ("text/html", "application/xhtml+xml", "body_xhtml")
PICTURE_TYPES = ("picture", "image", "graphic")
CORRECTION_NOTE_CLASS = "correction"
UNTITLED = "Untitled"


@dataclass(frozen=True, slots=True)
class Photo:
    """One picture of an article, at its largest (or "original") rendition."""

    uri: str  # the picture's own stable id (ninjs association uri, else the rendition's href)
    href: str
    content_type: str | None
    width: int | None
    height: int | None
    headline: str | None
    caption: str | None
    credit: str | None  # ninjs ``by`` of the picture, e.g. "AP"
    copyright_holder: str | None


@dataclass(frozen=True, slots=True)
class Subject:
    """A subject or a place: a name, and a concept URI and/or a literal code when the CMS sent them."""

    name: str
    uri: str | None = None
    code: str | None = None

    @property
    def term(self) -> str:
        """The most stable identifier available: the literal code, the concept URI, else the name."""
        return self.code or self.uri or self.name


@dataclass(frozen=True, slots=True)
class ItemView:
    """One article at one revision, as every format shows it."""

    article_id: str
    uri: str
    version: int
    kind: str
    signal: str | None
    pub_status: str
    first_created: datetime
    version_created: datetime
    ingested_at: datetime
    headline: str
    standfirst: str | None
    body_html: str | None
    body_text: str | None
    byline: str | None
    language: str | None
    slugline: str | None
    subjects: tuple[Subject, ...]
    places: tuple[Subject, ...]
    photos: tuple[Photo, ...]
    correction_note: str | None
    ed_note: str | None
    copyright_holder: str | None
    usage_terms: str | None
    kill_reason: str | None
    item_url: str  # this server's URL of the item
    link: str | None  # the web page: the ninjs uri when it is http(s)
    publisher: str = ""
    has_content: bool = True  # False for a tombstone: withdrawn, or its body dropped/purged

    @classmethod
    def from_revision(cls, rev: Revision, item_url: str) -> ItemView:
        """The view of ``rev``. Memoised by content (every field of the revision, and its document
        serialised): each format of each page asks again, with revisions freshly read from Redis."""
        try:
            key = (item_url, *(getattr(rev, name) for name in _REVISION_KEY_FIELDS),
                   None if rev.document is None else orjson.dumps(rev.document))
            hash(key)
        except TypeError:  # not JSON or not hashable (orjson's error is a TypeError): no memo
            return cls._from_revision(rev, item_url)
        with _VIEWS_LOCK:
            view = _VIEWS.get(key)
            if view is not None:
                _VIEWS.move_to_end(key)
                return view
        view = cls._from_revision(rev, item_url)
        with _VIEWS_LOCK:
            _VIEWS[key] = view
            while len(_VIEWS) > VIEW_MEMO_SIZE:
                _VIEWS.popitem(last=False)
        return view

    @classmethod
    def _from_revision(cls, rev: Revision, item_url: str) -> ItemView:
        document = rev.document
        withdrawn = rev.pub_status == CANCELED
        link = rev.uri if rev.uri.lower().startswith(("http://", "https://")) else None
        common: dict[str, Any] = dict(
            article_id=rev.article_id, uri=rev.uri, version=rev.version, kind=rev.kind, signal=rev.signal,
            pub_status=rev.pub_status, first_created=rev.first_created, version_created=rev.version_created,
            ingested_at=rev.ingested_at, ed_note=_text(rev.ed_note), kill_reason=_text(rev.kill_reason),
            item_url=item_url, link=link, publisher=rev.publisher,
        )
        if document is None:
            return cls(**common, **_EMPTY_CONTENT, headline="", byline=None, language=None, slugline=None,
                       copyright_holder=None, usage_terms=None, has_content=False)
        described: dict[str, Any] = dict(
            headline=_by_role(document.get("headlines"), "main", unlabelled="main") or "",
            language=_text(document.get("language")),
            slugline=_text(document.get("slugline")),
            byline=_text(document.get("by")),
            copyright_holder=_text(document.get("copyrightHolder")),
            usage_terms=_text(document.get("usageTerms")),
        )
        if common["ed_note"] is None:
            common["ed_note"] = _text(document.get("edNote"))
        if withdrawn:
            # A tombstone keeps only what identifies the story: no body, photos, summary or correction.
            return cls(**common, **_EMPTY_CONTENT, **described, has_content=False)
        return cls(
            **common,
            **described,
            standfirst=_by_role(document.get("descriptions"), "summary", unlabelled="summary"),
            correction_note=_by_role(document.get("descriptions"), "correction"),
            body_html=_body(document.get("bodies"), HTML_BODY_TYPES),
            body_text=_body(document.get("bodies"), ("text/plain",)),
            subjects=_concepts(document.get("subjects")),
            places=_concepts(document.get("places")),
            photos=_photos(document.get("associations")),
        )

    @property
    def withdrawn(self) -> bool:
        return self.pub_status == CANCELED

    @property
    def is_tombstone(self) -> bool:
        return not self.has_content

    @property
    def permalink(self) -> str:
        return self.link or self.item_url

    @property
    def display_title(self) -> str:
        """The title readers see; a withdrawn story says so in front of its headline."""
        if self.withdrawn:
            return f"Withdrawn: {self.headline}" if self.headline.strip() else "Withdrawn story"
        if self.is_tombstone and not self.headline.strip():
            return "Story no longer available"
        return self.headline if self.headline.strip() else (self.slugline or UNTITLED)

    @property
    def tombstone_notice(self) -> str:
        """The plain-text summary a tombstone carries instead of its story."""
        if self.withdrawn:
            notice = "This story has been withdrawn."
            return f"{notice} Reason: {self.kill_reason}" if self.kill_reason else notice
        return "This story is no longer available."

    @property
    def language_tag(self) -> str | None:
        """The article's language when it is a well-formed language tag (else None: no format states it)."""
        return language_tag(self.language)

    def reader_html(self, include_photos: bool = True) -> str:
        """The body as HTML for readers, opened by a visible correction note when there is one; without
        photo rights, without its pictures (and their captions). A story in a right-to-left language is
        wrapped in ``<div dir="rtl" lang="...">``."""
        note = correction_note_html(self.correction_note) if self.correction_note else ""
        body = self.body_for(include_photos)
        if body is None and self.body_text is not None:  # a plain-text story: its paragraphs, escaped
            body = "".join(_paragraph_html(p) for p in self.body_text.split("\n\n") if p.strip())
        html = note + (body or "")
        tag = self.language_tag
        if html and tag and text_direction(tag) == "rtl":
            html = f'<div dir="rtl" lang="{tag}">{html}</div>'
        return html

    def body_for(self, include_photos: bool) -> str | None:
        if self.body_html is None or include_photos:
            return self.body_html
        return without_pictures(self.body_html)

    def reader_text(self) -> str | None:
        if self.body_text is None:
            return None
        return f"{self.correction_note}\n\n{self.body_text}" if self.correction_note else self.body_text


@dataclass(frozen=True, slots=True)
class FeedView:
    """The feed document around the items: identity, links and the moment it was built."""

    name: str
    title: str
    description: str
    language: str | None
    self_url: str
    alternate_url: str
    hub_url: str | None
    built_at: datetime
    render_id: str
    next_url: str | None = None
    prev_url: str | None = None
    first_url: str | None = None
    include_photos: bool = True
    author: str | None = None  # who entries without a byline are credited to; default: the title
    # RFC 5005 archived feeds: an archive page says so (fh:archive) and links to its neighbours and to
    # the subscription document (current); the head links to the newest archive page (prev-archive).
    archive: bool = False
    prev_archive_url: str | None = None
    next_archive_url: str | None = None
    current_url: str | None = None

    @property
    def archive_links(self) -> tuple[tuple[str, str], ...]:
        """The RFC 5005 archive links the document carries: (rel, URL), in a fixed order."""
        return tuple((rel, url) for rel, url in (("current", self.current_url),
                                                 ("prev-archive", self.prev_archive_url),
                                                 ("next-archive", self.next_archive_url)) if url)

    @property
    def feed_id(self) -> str:
        """Every page of a paged feed shares the first page's id (RFC 5005)."""
        return self.first_url or self.self_url

    @property
    def author_name(self) -> str:
        return self.author or self.title


VIEW_MEMO_SIZE = 512
_VIEWS: OrderedDict[tuple[Any, ...], ItemView] = OrderedDict()
_VIEWS_LOCK = threading.Lock()
_REVISION_KEY_FIELDS = tuple(f.name for f in dataclasses.fields(Revision) if f.name != "document")


def language_tag(value: str | None) -> str | None:
    """``value`` when it is a well-formed language tag (``en``, ``ar``, ``pt-BR``, ``az-Arab``), else None."""
    return value if value is not None and LANGUAGE_TAG.fullmatch(value) else None


def text_direction(tag: str) -> str | None:
    """``"rtl"`` for a language tag whose language or script is written right to left, else None."""
    subtags = tag.lower().split("-")
    if len(subtags) > 1 and len(subtags[1]) == 4:  # a script subtag decides: az-Arab is, ku-Latn is not
        return "rtl" if subtags[1] in RTL_SCRIPTS else None
    return "rtl" if subtags[0] in RTL_LANGUAGES else None


def clear_view_memo() -> None:
    with _VIEWS_LOCK:
        _VIEWS.clear()


def _paragraph_html(text: str) -> str:
    paragraph = lxml.html.Element("p")
    paragraph.text = text
    return lxml.html.tostring(paragraph, encoding="unicode")


def correction_note_html(note: str) -> str:
    paragraph = lxml.html.Element("p", {"class": CORRECTION_NOTE_CLASS})
    emphasis = lxml.html.Element("em")
    emphasis.text = note
    paragraph.append(emphasis)
    return lxml.html.tostring(paragraph, encoding="unicode")


def photos_to_show(feed: FeedView, item: ItemView) -> tuple[Photo, ...]:
    return item.photos if feed.include_photos and not item.is_tombstone else ()


_EMPTY_CONTENT: dict[str, Any] = dict(
    standfirst=None, body_html=None, body_text=None, subjects=(), places=(), photos=(), correction_note=None,
)


def _text(value: Any) -> str | None:
    """A string with something visible in it, cleaned of what XML forbids (whatever the store holds).

    Blank strings count as absent: a subject named " " would otherwise be an Atom/RSS category whose
    term is only whitespace."""
    if not isinstance(value, str):
        return None
    value = xml_safe(value)
    return value if value.strip() else None


def _by_role(entries: Any, role: str, unlabelled: str | None = None) -> str | None:
    """The first non-empty value with ``role``; entries without a role count as ``unlabelled``."""
    for entry in entries or ():
        if isinstance(entry, dict) and entry.get("role", unlabelled) == role:
            value = _text(entry.get("value"))
            if value is not None:
                return value
    return None


def _body(bodies: Any, content_types: tuple[str, ...]) -> str | None:
    candidates = [b for b in bodies or () if isinstance(b, dict) and b.get("contentType") in content_types]
    # Prefer the main body when the CMS sends several of one type.
    candidates.sort(key=lambda body: body.get("role", "main") != "main")
    for body in candidates:
        value = _text(body.get("value"))
        if value is not None:
            return value
    return None


def _concepts(entries: Any) -> tuple[Subject, ...]:
    concepts = []
    for entry in entries or ():
        if not isinstance(entry, dict):
            continue
        uri, code = _text(entry.get("uri")), _text(entry.get("literal"))
        name = _text(entry.get("name")) or code or uri
        if name is not None:
            concepts.append(Subject(name=name, uri=uri, code=code))
    return tuple(concepts)


def _photos(associations: Any) -> tuple[Photo, ...]:
    photos = []
    for association in associations or ():
        if not isinstance(association, dict) or association.get("type") not in PICTURE_TYPES:
            continue
        rendition = _best_rendition(association.get("renditions"))
        if rendition is None:
            continue
        photos.append(Photo(
            uri=_text(association.get("uri")) or rendition["href"],
            href=rendition["href"],
            content_type=_text(rendition.get("contentType")),
            width=_dimension(rendition.get("width")),
            height=_dimension(rendition.get("height")),
            headline=_by_role(association.get("headlines"), "main", unlabelled="main"),
            caption=_by_role(association.get("descriptions"), "caption", unlabelled="caption"),
            credit=_text(association.get("by")),
            copyright_holder=_text(association.get("copyrightHolder")),
        ))
    return tuple(photos)


def _best_rendition(renditions: Any) -> dict[str, Any] | None:
    usable = [r for r in renditions or () if isinstance(r, dict) and _text(r.get("href"))]
    if not usable:
        return None
    for rendition in usable:
        if rendition.get("name") == "original":
            return rendition
    return max(usable, key=lambda r: (_dimension(r.get("width")) or 0) * (_dimension(r.get("height")) or 0))


def _dimension(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
