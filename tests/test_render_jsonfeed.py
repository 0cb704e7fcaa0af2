"""JSON Feed 1.1 output: the fields the spec requires, item values equal to the input, the
``_syndicate`` extension, hubs and paging, and tombstones."""

from __future__ import annotations

import orjson
from render_helpers import (
    KILL_REASON,
    feed_view,
    killed_revision,
    seed_document,
    seed_v1_revision,
    seed_v2_revision,
    view,
)

from server.core.values import parse_iso
from server.feeds.render import JSON_FEED_MEDIA_TYPE, render_json_feed


def render(items, **feed_overrides) -> dict:
    return orjson.loads(render_json_feed(feed_view(**feed_overrides), items))


def test_fields_the_spec_requires() -> None:
    document = render([view(seed_v1_revision()), view(seed_v2_revision()), view(killed_revision())])
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert isinstance(document["title"], str) and document["title"]
    assert isinstance(document["items"], list) and len(document["items"]) == 3
    for item in document["items"]:
        assert isinstance(item["id"], str) and item["id"]
        assert isinstance(item.get("content_html"), str) or isinstance(item.get("content_text"), str)
        # Extensions are the only keys the spec leaves to publishers, and they start with "_".
        assert set(item) <= {
            "id", "url", "external_url", "title", "content_html", "content_text", "summary", "image",
            "banner_image", "date_published", "date_modified", "authors", "tags", "language", "attachments",
        } | {key for key in item if key.startswith("_")}


def test_feed_level_fields() -> None:
    feed = feed_view(next_url="https://feeds.example.org/feeds/world.json?after=x")
    document = orjson.loads(render_json_feed(feed, []))
    assert document["home_page_url"] == feed.alternate_url
    assert document["feed_url"] == feed.self_url
    assert document["description"] == feed.description
    assert document["language"] == "en"
    assert document["next_url"] == feed.next_url
    assert document["hubs"] == [{"type": "WebSub", "url": feed.hub_url}]
    assert document["items"] == []
    assert "next_url" not in render([])


def test_item_values_equal_the_input() -> None:
    item = view(seed_v2_revision())
    [entry] = render([item])["items"]
    assert entry["id"] == item.uri == seed_document(2)["uri"]
    assert entry["url"] == item.uri
    assert entry["title"] == item.headline
    assert entry["summary"] == item.standfirst
    assert parse_iso(entry["date_published"]) == item.first_created
    assert parse_iso(entry["date_modified"]) == item.version_created
    assert entry["tags"] == ["armed conflict", "Russia-Ukraine war"]
    assert entry["language"] == "en"
    assert entry["image"] == item.photos[0].href
    assert entry["attachments"] == [
        {"url": p.href, "mime_type": "image/jpeg", "title": p.headline} for p in item.photos]
    assert entry["content_text"].startswith(item.correction_note + "\n\n")
    assert entry["content_text"].endswith(item.body_text)
    assert "authors" not in entry  # the seed has no byline


def test_syndicate_extension() -> None:
    item = view(seed_v2_revision())
    [entry] = render([item])["items"]
    extension = entry["_syndicate"]
    assert extension["version"] == 2
    assert extension["kind"] == "correction"
    assert extension["signal"] == "correction"
    assert extension["pubStatus"] == "usable"
    assert extension["correction"] == item.correction_note
    assert extension["withdrawn"] is False
    assert [(p["caption"], p["credit"], p["copyrightHolder"]) for p in extension["photos"]] == [
        (p.caption, "AP", "The Associated Press") for p in item.photos]


def test_byline_becomes_authors() -> None:
    import dataclasses

    document = seed_document(1)
    document["by"] = "Jane Reporter"
    [entry] = render([view(dataclasses.replace(seed_v1_revision(), document=document))])["items"]
    assert entry["authors"] == [{"name": "Jane Reporter"}]


def test_killed_item_is_a_tombstone() -> None:
    item = view(killed_revision())
    [entry] = render([item])["items"]
    assert entry["id"] == item.uri
    assert entry["title"].startswith("Withdrawn: ")
    assert "withdrawn" in entry["content_text"] and KILL_REASON in entry["content_text"]
    assert "content_html" not in entry and "image" not in entry and "attachments" not in entry
    assert entry["_syndicate"]["withdrawn"] is True
    assert entry["_syndicate"]["pubStatus"] == "canceled"
    assert entry["_syndicate"]["killReason"] == KILL_REASON


def test_media_type() -> None:
    assert JSON_FEED_MEDIA_TYPE == "application/feed+json"
