"""JSON Feed 1.1 (https://jsonfeed.org/version/1.1), serialised with orjson.

The feed has version, title, home_page_url, feed_url, description, language, authors, ``hubs`` (WebSub)
and ``next_url`` when paged; RFC 5005's archive links, which JSON Feed has no member for, are in a
top-level ``_syndicate`` object (``archive``: whether this is an archive page, ``current_url``,
``prev_archive_url``, ``next_archive_url``). An item's ``id`` is the ninjs uri (stable across revisions); ``url`` the
web page; ``title``, ``summary`` (the standfirst), ``content_html`` (the body, opened by a visible
correction note) and ``content_text`` (the plain-text body, when the CMS sent one); ``date_published``
= first created, ``date_modified`` = this revision; ``authors`` (the byline), ``tags`` (subject names),
``image`` (the first photo) and one ``attachments`` entry per photo whose media type is known.

JSON Feed has no place for captions, credits or revision data, so each item carries a ``_syndicate``
extension object (the spec lets publishers add keys starting with an underscore, which readers ignore):
``version``, ``kind``, ``signal``, ``pubStatus``, ``correction`` (the reader-facing correction note),
``withdrawn``, ``killReason`` (a withdrawn story's), ``edNote``, and ``photos`` with caption, credit and
copyright holder. The editorial note goes in as ``edNote`` whenever the revision has one, a kill's
included: for the partner's editors, not its readers.

A withdrawn story is a tombstone item: "Withdrawn: <headline>" as title, the withdrawal notice as
``content_text`` and ``summary``, no HTML, no photos.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.core.values import iso
from server.feeds.render.view import FeedView, ItemView, Photo, photos_to_show

JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
JSON_FEED_MEDIA_TYPE = "application/feed+json"
EXTENSION_KEY = "_syndicate"


def render_json_feed(feed: FeedView, items: list[ItemView]) -> bytes:
    document: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": feed.title,
        "home_page_url": feed.alternate_url,
        "feed_url": feed.self_url,
    }
    if feed.description:
        document["description"] = feed.description
    if feed.language:
        document["language"] = feed.language
    document["authors"] = [{"name": feed.author_name}]
    if feed.next_url:
        document["next_url"] = feed.next_url
    if feed.hub_url:
        document["hubs"] = [{"type": "WebSub", "url": feed.hub_url}]
    if feed.archive or feed.archive_links:  # RFC 5005, which JSON Feed has no words for
        document[EXTENSION_KEY] = {"archive": feed.archive, **{rel.replace("-", "_") + "_url": url
                                                               for rel, url in feed.archive_links}}
    document["items"] = [_item(feed, item) for item in items]
    return orjson.dumps(document)


def _item(feed: FeedView, item: ItemView) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": item.uri, "url": item.permalink, "title": item.display_title}
    photos = photos_to_show(feed, item)
    if item.is_tombstone:
        entry["content_text"] = item.tombstone_notice
        entry["summary"] = item.tombstone_notice
    else:
        entry["content_html"] = item.reader_html(feed.include_photos)
        text = item.reader_text()
        if text is not None:
            entry["content_text"] = text
        if item.standfirst:
            entry["summary"] = item.standfirst
        if photos:
            entry["image"] = photos[0].href
    entry["date_published"] = iso(item.first_created)
    entry["date_modified"] = iso(item.version_created)
    if item.byline:
        entry["authors"] = [{"name": item.byline}]
    if item.language_tag:  # the article's own language (the feed's is the top-level one)
        entry["language"] = item.language_tag
    if item.subjects:
        entry["tags"] = [subject.name for subject in item.subjects]
    attachments = [_attachment(photo) for photo in photos if photo.content_type]
    if attachments:
        entry["attachments"] = attachments
    entry[EXTENSION_KEY] = _extension(item, photos)
    return entry


def _attachment(photo: Photo) -> dict[str, Any]:
    attachment: dict[str, Any] = {"url": photo.href, "mime_type": photo.content_type}
    if photo.headline:
        attachment["title"] = photo.headline
    return attachment


def _extension(item: ItemView, photos: tuple[Photo, ...]) -> dict[str, Any]:
    extension: dict[str, Any] = {
        "version": item.version,
        "kind": item.kind,
        "signal": item.signal,
        "pubStatus": item.pub_status,
        "correction": item.correction_note,
        "withdrawn": item.withdrawn,
    }
    if item.withdrawn:
        extension["killReason"] = item.kill_reason
    if item.ed_note:
        extension["edNote"] = item.ed_note  # for the partner's editors, not its readers: a kill's too
    if photos:
        extension["photos"] = [
            {"uri": photo.uri, "url": photo.href, "caption": photo.caption, "credit": photo.credit,
             "copyrightHolder": photo.copyright_holder, "width": photo.width, "height": photo.height}
            for photo in photos
        ]
    return extension
