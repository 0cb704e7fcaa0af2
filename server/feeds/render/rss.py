"""RSS 2.0 feeds, built with feedgen.

The channel has title, link (the web page), description, language, lastBuildDate (the build time) and
``atom:link`` elements: ``rel="self"``, plus ``rel="hub"`` (WebSub) and ``rel="next"``/``"previous"``/
``"first"`` when paged; RFC 5005's ``prev-archive``/``next-archive``/``current`` and ``fh:archive`` on
archive pages (the head carries ``prev-archive``). An item has its headline as title, the web link, ``guid isPermaLink="false"``
holding the ninjs uri (the same across revisions), ``pubDate`` (RFC 822) = when the story was first
created, the standfirst as ``description``, the body (with its correction note) as ``content:encoded``,
the byline as ``dc:creator``, the article's language as ``dc:language``, subjects as ``category``, photos as Media RSS, and the revision number and
signal as ``syndicate:version`` / ``syndicate:signal`` / ``syndicate:pubStatus`` (see ``atom``). The
edNote goes in as ``syndicate:edNote``, for the partner's editors.

Revision time. RSS 2.0 has no "updated" element for items, and ``pubDate`` must stay the first
publication time or readers would re-sort a corrected story to the top as if it were new. We put the
revision's versionCreated into ``atom:updated`` inside the item: the Atom namespace is already declared
for ``atom:link``, the element means exactly "last significant change", and common parsers (feedparser,
and the readers built on it or on similar libraries) read it as the entry's updated time.
We do not use ``dc:date``, which many readers take as the publication date.

docs/feeds.md paragraph (how an RSS reader sees a correction):

    A correction keeps the item's guid (the story's ninjs uri) and its pubDate, so an RSS reader treats
    the corrected version as the same item, not as a new story. Readers that refresh items they have
    already fetched replace the text with the corrected one, which now opens with a visible correction
    note ("Correction: ..."), and those that understand atom:updated also show the revision time. Readers
    that never re-read an item whose guid they know keep showing the first version: RSS has no way to
    force that. Subscribers who must be told about every correction should use the Atom or JSON Feed
    versions (whose updated / date_modified change with each revision), NewsML-G2 (sig:correction), or
    webhooks.

A withdrawn story is a tombstone item: "Withdrawn: <headline>" as title, a description saying it was
withdrawn (and why, when a reason was given), no content:encoded, no photos.
"""

from __future__ import annotations

from feedgen.entry import FeedEntry
from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.ext.dc import DcEntryExtension, DcExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from server.feeds.render.atom import (
    REVISION_EXTENSION,
    CopiedEntry,
    RevisionEntryExtension,
    register_history_extension,
    register_revision_extension,
)
from server.feeds.render.mediarss import EXTENSION_NAME as MEDIA_RSS_EXTENSION
from server.feeds.render.mediarss import MediaRssEntryExtension, register_media_rss
from server.feeds.render.memo import FragmentMemo
from server.feeds.render.view import FeedView, ItemView, photos_to_show

ATOM_NS = "http://www.w3.org/2005/Atom"
RSS_MEDIA_TYPE = "application/rss+xml"
GENERATOR_NAME = "syndicate"
EXTENSION_NAME = "rss_atom"


class RssAtomLinksExtension(BaseExtension):
    """Channel level: the ``atom:link`` relations feedgen does not write into RSS (hub, paging)."""

    def __init__(self) -> None:
        self._links: list[tuple[str, str]] = []

    def add_link(self, rel: str, href: str) -> None:
        self._links.append((rel, href))

    def extend_rss(self, rss: etree._Element) -> etree._Element:
        channel = rss.find("channel")
        for rel, href in self._links:
            link = etree.SubElement(channel, f"{{{ATOM_NS}}}link", href=href, rel=rel)
            if rel != "hub":
                link.set("type", RSS_MEDIA_TYPE)
        return rss


class RssAtomUpdatedExtension(BaseEntryExtension):
    """Item level: ``atom:updated``, the time of the revision being shown."""

    def __init__(self) -> None:
        self._updated: str | None = None

    def updated(self, value: str) -> None:
        self._updated = value

    def extend_rss(self, item: etree._Element) -> etree._Element:
        if self._updated is not None:
            etree.SubElement(item, f"{{{ATOM_NS}}}updated").text = self._updated
        return item


_ITEMS = FragmentMemo()


def render_rss(feed: FeedView, items: list[ItemView]) -> bytes:
    generator = _feed_generator(feed)
    for item in items:
        generator.add_entry(CopiedEntry(_item_element(feed, item)), order="append")
    return generator.rss_str(pretty=False, encoding="UTF-8", xml_declaration=True)


def _item_element(feed: FeedView, item: ItemView) -> etree._Element:
    """The item's ``item`` element, memoised: of the feed it depends only on whether photos are shown."""
    (element,) = _ITEMS.shared((item, feed.include_photos), lambda: (_build_item(feed, item),))
    return element


def _build_item(feed: FeedView, item: ItemView) -> etree._Element:
    # The entry extensions in the order _feed_generator registers them: feedgen writes them in order.
    entry = FeedEntry()
    entry.register_extension(MEDIA_RSS_EXTENSION, MediaRssEntryExtension, atom=True, rss=True)
    entry.register_extension(REVISION_EXTENSION, RevisionEntryExtension, atom=False, rss=True)
    entry.register_extension("dc", DcEntryExtension, atom=False, rss=True)
    entry.register_extension(EXTENSION_NAME, RssAtomUpdatedExtension, atom=False, rss=True)
    _fill_item(entry, feed, item)
    return entry.rss_entry()


def _feed_generator(feed: FeedView) -> FeedGenerator:
    generator = FeedGenerator()
    register_media_rss(generator)
    register_revision_extension(generator, atom=False, rss=True)
    register_history_extension(generator, feed, atom=False, rss=True)
    generator.register_extension("dc", DcExtension, DcEntryExtension, atom=False, rss=True)  # = load_extension("dc")
    generator.register_extension(EXTENSION_NAME, RssAtomLinksExtension, RssAtomUpdatedExtension,
                                 atom=False, rss=True)
    generator.title(feed.title)
    generator.description(feed.description or feed.title)
    generator.generator(GENERATOR_NAME)
    if feed.language:
        generator.language(feed.language)
    generator.lastBuildDate(feed.built_at)
    generator.link(href=feed.self_url, rel="self", type=RSS_MEDIA_TYPE)
    # feedgen takes the channel's <link> from the last link added, so the web page goes last.
    generator.link(href=feed.alternate_url, rel="alternate")
    links = getattr(generator, EXTENSION_NAME)
    for rel, href in (("hub", feed.hub_url), ("first", feed.first_url), ("previous", feed.prev_url),
                      ("next", feed.next_url), *feed.archive_links):
        if href:
            links.add_link(rel, href)
    return generator


def _fill_item(entry: FeedEntry, feed: FeedView, item: ItemView) -> FeedEntry:
    entry.guid(item.uri, permalink=False)
    entry.title(item.display_title)
    entry.link(href=item.permalink)
    entry.pubDate(item.first_created)
    getattr(entry, EXTENSION_NAME).updated(item.version_created.isoformat())
    getattr(entry, REVISION_EXTENSION).revision(item)
    if item.byline:
        entry.dc.dc_creator(item.byline)
    if item.language_tag:  # the article's own language (the channel's <language> is the feed's)
        entry.dc.dc_language(item.language_tag)
    if item.is_tombstone:
        entry.description(item.tombstone_notice, isSummary=True)
        return entry
    if item.standfirst:
        entry.description(item.standfirst, isSummary=True)
    entry.content(item.reader_html(feed.include_photos))
    for subject in item.subjects:
        entry.category(term=subject.term, label=subject.name)
    for photo in photos_to_show(feed, item):
        entry.mediarss.add_photo(photo)
    return entry
