"""Media RSS (http://search.yahoo.com/mrss/) for our Atom and RSS feeds: a feedgen extension of our own.

Each photo of an entry becomes its own ``media:content`` (url, type, medium="image", width, height)
holding ``media:title``, ``media:description`` (the caption), ``media:credit`` and ``media:copyright``.
feedgen's bundled media extension puts all contents of an entry into one ``media:group``, which in
Media RSS means "alternative renditions of ONE object", and it has no description or credit.

Register it with :func:`register_media_rss` and add photos with ``entry.mediarss.add_photo(photo)``.
"""

from __future__ import annotations

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from server.feeds.render.view import Photo

MEDIA_RSS_NS = "http://search.yahoo.com/mrss/"
EXTENSION_NAME = "mediarss"
# The credit of a ninjs picture (its ``by``) names who took it, or the agency standing in for them.
CREDIT_ROLE = "photographer"
CREDIT_SCHEME = "urn:ebu"  # the scheme Media RSS defines its role values in


def _media(name: str) -> str:
    return f"{{{MEDIA_RSS_NS}}}{name}"


class MediaRssExtension(BaseExtension):
    """Feed level: only declares the ``media`` prefix on the root element."""

    def extend_ns(self) -> dict[str, str]:
        return {"media": MEDIA_RSS_NS}


class MediaRssEntryExtension(BaseEntryExtension):
    """Entry level: one ``media:content`` per photo, in the order added."""

    def __init__(self) -> None:
        self._photos: list[Photo] = []

    def extend_ns(self) -> dict[str, str]:
        return {"media": MEDIA_RSS_NS}

    def add_photo(self, photo: Photo) -> None:
        self._photos.append(photo)

    def photos(self) -> list[Photo]:
        return list(self._photos)

    def extend_atom(self, entry: etree._Element) -> etree._Element:
        self._append_contents(entry)
        return entry

    def extend_rss(self, item: etree._Element) -> etree._Element:
        self._append_contents(item)
        return item

    def _append_contents(self, parent: etree._Element) -> None:
        for photo in self._photos:
            media_content(photo, parent)


def media_content(photo: Photo, parent: etree._Element | None = None) -> etree._Element:
    """The photo's ``media:content``, as a new child of ``parent`` when given."""
    attributes = {"url": photo.href, "medium": "image"}
    if parent is None:
        content = etree.Element(_media("content"), attributes)
    else:
        content = etree.SubElement(parent, _media("content"), attributes)
    if photo.content_type:
        content.set("type", photo.content_type)
    if photo.width is not None:
        content.set("width", str(photo.width))
    if photo.height is not None:
        content.set("height", str(photo.height))
    if photo.headline:
        etree.SubElement(content, _media("title"), type="plain").text = photo.headline
    if photo.caption:
        etree.SubElement(content, _media("description"), type="plain").text = photo.caption
    if photo.credit:
        etree.SubElement(content, _media("credit"), role=CREDIT_ROLE, scheme=CREDIT_SCHEME).text = photo.credit
    if photo.copyright_holder:
        etree.SubElement(content, _media("copyright")).text = photo.copyright_holder
    return content


def register_media_rss(generator: FeedGenerator) -> None:
    """Enable Media RSS photos for Atom and RSS output of ``generator``; call before adding entries."""
    generator.register_extension(EXTENSION_NAME, MediaRssExtension, MediaRssEntryExtension, atom=True, rss=True)
