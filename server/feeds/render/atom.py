"""Atom 1.0 (RFC 4287) feeds and standalone entry documents, built with feedgen.

A feed carries id (the first page's URL, shared by every page), title, updated (the build time),
links ``self``, ``alternate``, ``hub`` (WebSub) and, when paged, ``next``/``previous``/``first``
(RFC 5005 paging); ``prev-archive``/``next-archive``/``current`` and ``fh:archive`` on archive pages
(RFC 5005 archived feeds; the head carries ``prev-archive``). An entry's ``id`` is the ninjs uri, so it is the same entry across revisions; ``published``
is when the story was first created and ``updated`` when this revision was. The body goes into
``content type="html"`` (sanitised on ingest), opened by a visible correction-note paragraph when the
revision carries one; photos go in as Media RSS. The editorial note (edNote, e.g. a machine-translation notice) goes in
as ``syndicate:edNote`` whenever the revision has one (a kill's and a withdrawal's too): it is for the
partner's editors (ninjs: "not published to the end-user"), not its readers.

Atom has no element for a revision number or its signal, so each entry also carries three elements
of our own namespace (:data:`SYNDICATE_NS`, prefix ``syndicate``; readers ignore what they do not
know): ``syndicate:version`` (1, 2, ...), ``syndicate:signal`` ("update" or "correction", absent for a
first version) and ``syndicate:pubStatus`` ("usable", "withheld", "canceled"). The same
:class:`RevisionEntryExtension` serves the RSS renderer; JSON Feed has the same data in ``_syndicate``.

An entry whose article has a language says so in ``xml:lang`` (the article's, not the feed's: an
Arabic story in an English feed is read as Arabic); a right-to-left story's HTML comes wrapped in
``<div dir="rtl">`` (:meth:`~server.feeds.render.view.ItemView.reader_html`).

A withdrawn story is a tombstone entry: "Withdrawn: <headline>" as title, a summary saying it was
withdrawn (and why, when a reason was given), no content, no photos.
"""

from __future__ import annotations

import copy

from feedgen.entry import FeedEntry
from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from server.feeds.render.mediarss import EXTENSION_NAME as MEDIA_RSS_EXTENSION
from server.feeds.render.mediarss import MEDIA_RSS_NS, MediaRssEntryExtension, register_media_rss
from server.feeds.render.memo import FragmentMemo
from server.feeds.render.view import FeedView, ItemView, photos_to_show

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE = "application/atom+xml"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
GENERATOR_NAME = "syndicate"
SYNDICATE_NS = "urn:x-syndicate:feed-extension:1"
REVISION_EXTENSION = "syndicate"
FEED_HISTORY_NS = "http://purl.org/syndication/history/1.0"  # RFC 5005
HISTORY_EXTENSION = "feed_history"


class RevisionExtension(BaseExtension):
    """Feed level: only declares the ``syndicate`` prefix on the root element."""

    def extend_ns(self) -> dict[str, str]:
        return {"syndicate": SYNDICATE_NS}


class HistoryExtension(BaseExtension):
    """Feed level (Atom feed, RSS channel): RFC 5005's ``fh:archive`` on an archive page."""

    def __init__(self) -> None:
        self.archive = False

    def extend_ns(self) -> dict[str, str]:
        return {"fh": FEED_HISTORY_NS} if self.archive else {}

    def extend_atom(self, feed: etree._Element) -> etree._Element:
        if self.archive:
            etree.SubElement(feed, f"{{{FEED_HISTORY_NS}}}archive")
        return feed

    def extend_rss(self, rss: etree._Element) -> etree._Element:
        if self.archive:
            etree.SubElement(rss.find("channel"), f"{{{FEED_HISTORY_NS}}}archive")
        return rss


def register_history_extension(generator: FeedGenerator, feed: FeedView, atom: bool = True, rss: bool = True) -> None:
    generator.register_extension(HISTORY_EXTENSION, HistoryExtension, atom=atom, rss=rss)
    getattr(generator, HISTORY_EXTENSION).archive = feed.archive


class RevisionEntryExtension(BaseEntryExtension):
    """Entry level: which revision of the story this is (Atom entries and RSS items alike)."""

    def __init__(self) -> None:
        self._fields: list[tuple[str, str]] = []

    def extend_ns(self) -> dict[str, str]:
        return {"syndicate": SYNDICATE_NS}

    def revision(self, item: ItemView) -> None:
        self._fields = [("version", str(item.version))]
        if item.signal:
            self._fields.append(("signal", item.signal))
        self._fields.append(("pubStatus", item.pub_status))
        if item.ed_note:  # for the partner's editors, not its readers: a kill's or withdrawal's too
            self._fields.append(("edNote", item.ed_note))

    def extend_atom(self, entry: etree._Element) -> etree._Element:
        return self._append(entry)

    def extend_rss(self, item: etree._Element) -> etree._Element:
        return self._append(item)

    def _append(self, parent: etree._Element) -> etree._Element:
        for name, value in self._fields:
            etree.SubElement(parent, f"{{{SYNDICATE_NS}}}{name}").text = value
        return parent


def register_revision_extension(generator: FeedGenerator, atom: bool = True, rss: bool = True) -> None:
    generator.register_extension(REVISION_EXTENSION, RevisionExtension, RevisionEntryExtension,
                                 atom=atom, rss=rss)


class CopiedEntry(FeedEntry):
    """A feedgen entry whose element was built earlier (and is memoised): ``atom_entry``/``rss_entry``
    return a deep copy of it. Its extensions are already in the element, so none are registered."""

    def __init__(self, element: etree._Element) -> None:
        super().__init__()
        self._element = element

    def atom_entry(self, extensions: bool = True) -> etree._Element:
        return copy.deepcopy(self._element)

    def rss_entry(self, extensions: bool = True) -> etree._Element:
        return copy.deepcopy(self._element)

    def register_extension(self, namespace: str, extension_class_entry: type | None = None,
                           atom: bool = True, rss: bool = True) -> None:
        return None


_ENTRIES = FragmentMemo()


def render_atom(feed: FeedView, items: list[ItemView]) -> bytes:
    generator = _feed_generator(feed)
    for item in items:
        generator.add_entry(CopiedEntry(_entry_element(feed, item)), order="append")
    return generator.atom_str(pretty=False, encoding="UTF-8", xml_declaration=True)


def _entry_element(feed: FeedView, item: ItemView) -> etree._Element:
    """The item's ``entry`` element, memoised: it depends on the item and, of the feed, only on who
    entries without a byline are credited to and whether photos are shown."""
    key = (item, None if item.byline else feed.author_name, feed.include_photos)
    (element,) = _ENTRIES.shared(key, lambda: (_build_entry(feed, item),))
    return element


def _build_entry(feed: FeedView, item: ItemView) -> etree._Element:
    entry = FeedEntry()
    entry.register_extension(MEDIA_RSS_EXTENSION, MediaRssEntryExtension, atom=True, rss=True)
    entry.register_extension(REVISION_EXTENSION, RevisionEntryExtension, atom=True, rss=False)
    _fill_entry(entry, feed, item)
    element = entry.atom_entry()
    if item.language_tag:  # the article's own language, whatever the feed's (RFC 4287 2: xml:lang)
        element.set(XML_LANG, item.language_tag)
    return element


def render_atom_entry(feed: FeedView, item: ItemView) -> bytes:
    """One entry as a standalone Atom Entry Document (``application/atom+xml;type=entry``)."""
    feed_root = etree.fromstring(render_atom(feed, [item]))
    entry = feed_root.find(f"{{{ATOM_NS}}}entry")
    root = etree.Element(entry.tag, entry.attrib,
                         nsmap={None: ATOM_NS, "media": MEDIA_RSS_NS, "syndicate": SYNDICATE_NS})
    root.extend(list(entry))
    language = feed_root.get(XML_LANG)
    if language and root.get(XML_LANG) is None:  # the entry's own language wins over the feed's
        root.set(XML_LANG, language)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


def _feed_generator(feed: FeedView) -> FeedGenerator:
    generator = FeedGenerator()
    register_media_rss(generator)
    register_revision_extension(generator, atom=True, rss=False)
    register_history_extension(generator, feed, atom=True, rss=False)
    generator.id(feed.feed_id)
    generator.title(feed.title)
    if feed.description:
        generator.subtitle(feed.description)
    generator.updated(feed.built_at)
    generator.generator(GENERATOR_NAME)
    if feed.language:
        generator.language(feed.language)
    generator.author(name=feed.author_name)
    generator.link(href=feed.self_url, rel="self", type=ATOM_MEDIA_TYPE)
    generator.link(href=feed.alternate_url, rel="alternate")
    if feed.hub_url:
        generator.link(href=feed.hub_url, rel="hub")
    if feed.first_url:
        generator.link(href=feed.first_url, rel="first", type=ATOM_MEDIA_TYPE)
    if feed.prev_url:
        generator.link(href=feed.prev_url, rel="previous", type=ATOM_MEDIA_TYPE)
    if feed.next_url:
        generator.link(href=feed.next_url, rel="next", type=ATOM_MEDIA_TYPE)
    for rel, href in feed.archive_links:
        generator.link(href=href, rel=rel, type=ATOM_MEDIA_TYPE)
    return generator


def _fill_entry(entry: FeedEntry, feed: FeedView, item: ItemView) -> FeedEntry:
    entry.id(item.uri)
    entry.title(item.display_title)
    entry.published(item.first_created)
    entry.updated(item.version_created)
    entry.link(href=item.permalink, rel="alternate")
    entry.author(name=item.byline or feed.author_name)
    getattr(entry, REVISION_EXTENSION).revision(item)
    if item.is_tombstone:
        entry.summary(item.tombstone_notice)
        return entry
    if item.standfirst:
        entry.summary(item.standfirst)
    entry.content(item.reader_html(feed.include_photos), type="html")
    for subject in item.subjects:
        entry.category(term=subject.term, label=subject.name)
    for photo in photos_to_show(feed, item):
        entry.mediarss.add_photo(photo)
    return entry
