"""RFC 5005 archived feeds (issue 12): ``?archive=<n>`` pages of the change log, for readers that want
the history. Pages of 3 changes here (``SYNDICATE_ARCHIVE_PAGE_CHANGES``), over real HTTP and Redis, in
Atom, RSS and JSON Feed (NewsML has the links in its HTTP ``Link`` header only)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import orjson
import pytest
from conftest import AUTH
from feed_validation import errors_for
from lxml import etree
from push_helpers import parse_link_header
from render_helpers import ATOM_NS, SAFE_PARSER
from yarl import URL

from server.domain.articles import EMBARGO_LIFT, NEW, PURGE, UPDATE, WITHHELD, Revision
from server.domain.feeds import FeedDefinition, in_archive

FH_NS = "http://purl.org/syndication/history/1.0"
SYN_NS = "urn:x-syndicate:feed-extension:1"
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
PAGE = 3


@pytest.fixture
def settings(settings):
    return dataclasses.replace(settings, archive_page_changes=PAGE)


def story(n: int, version: int = 1) -> dict:
    return {
        "uri": f"https://news.example.com/archive/{n}", "type": "text", "language": "en",
        "versionCreated": f"2024-01-01T00:{version:02d}:{n:02d}Z",
        "headlines": [{"role": "main", "value": f"Story {n}, version {version}"}],
        "bodies": [{"role": "main", "contentType": "text/html", "value": f"<p>Story {n} v{version}</p>"}],
    }


async def publish(client, doc: dict, query: str = "") -> None:
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def get(client, url: str):
    response = await client.get(URL(url).path_qs if url.startswith("http") else url)
    return response, await response.read()


def entries(fmt: str, body: bytes) -> list[tuple[str, int]]:
    """(id, syndicate version) of every entry, in document order."""
    if fmt == "json":
        return [(item["id"], item["_syndicate"]["version"]) for item in orjson.loads(body)["items"]]
    root = etree.fromstring(body, SAFE_PARSER)
    if fmt == "atom":
        return [(e.findtext(f"{{{ATOM_NS}}}id"), int(e.findtext(f"{{{SYN_NS}}}version")))
                for e in root.findall(f"{{{ATOM_NS}}}entry")]
    return [(i.findtext("guid"), int(i.findtext(f"{{{SYN_NS}}}version"))) for i in root.findall("channel/item")]


def body_links(fmt: str, body: bytes) -> tuple[dict[str, str], bool]:
    """The document's own RFC 5005 links (rel -> URL) and whether it says it is an archive."""
    if fmt == "json":
        extension = orjson.loads(body).get("_syndicate", {})
        links = {rel: extension[rel.replace("-", "_") + "_url"] for rel in ("current", "prev-archive", "next-archive")
                 if rel.replace("-", "_") + "_url" in extension}
        return links, bool(extension.get("archive"))
    root = etree.fromstring(body, SAFE_PARSER)
    parent = root if fmt == "atom" else root.find("channel")
    links = {link.get("rel"): link.get("href") for link in parent.findall(f"{{{ATOM_NS}}}link")
             if link.get("rel") in ("current", "prev-archive", "next-archive")}
    return links, parent.find(f"{{{FH_NS}}}archive") is not None


@pytest.mark.parametrize("fmt", ["atom", "rss", "json"])
async def test_archive_pages_hold_the_history_and_link_to_each_other(partner_client, fmt):
    for n in range(1, 6):  # changes 1..5
        await publish(partner_client, story(n))
    await publish(partner_client, story(1, 2), "?signal=correction")  # change 6: story 1 at version 2
    await publish(partner_client, story(6))  # change 7
    head, head_body = await get(partner_client, f"/feeds/latest/{fmt}")
    head_links = parse_link_header(head.headers["Link"])
    assert head_links["prev-archive"].endswith(f"/feeds/latest/{fmt}?archive=2")
    assert body_links(fmt, head_body) == ({"prev-archive": head_links["prev-archive"]}, False)
    if fmt != "json":
        assert errors_for(fmt, head_body) == []

    # Walk the history back from the head, as RFC 5005 says a reader may.
    pages, url = [], head_links["prev-archive"]
    while url:
        response, body = await get(partner_client, url)
        assert response.status == 200
        links = parse_link_header(response.headers["Link"])
        assert "hub" not in links and "next" not in links  # an archive page is not a subscription
        assert links["current"].endswith(f"/feeds/latest/{fmt}")
        assert body_links(fmt, body) == ({k: v for k, v in links.items() if k != "self"}, True)
        if fmt != "json":
            assert errors_for(fmt, body, url) == []  # RFC 4287 / RSS 2.0 (and the W3C's, when at hand)
        pages.append((links, entries(fmt, body), response))
        url = links.get("prev-archive")
    assert len(pages) == 2
    (second_links, second, second_response), (first_links, first, first_response) = pages
    uri = "https://news.example.com/archive/{}".format
    assert first == [(uri(1), 1), (uri(2), 1), (uri(3), 1)]  # changes 1-3, each at the version they made
    assert second == [(uri(4), 1), (uri(5), 1), (uri(1), 2)]  # changes 4-6: the correction of story 1
    assert first_links["next-archive"] == second_links["self"] and "prev-archive" not in first_links
    assert "next-archive" not in second_links  # page 3 is not complete yet
    assert first_response.headers["Cache-Control"].endswith("max-age=86400")  # sealed: a page follows it
    assert second_response.headers["Cache-Control"].endswith("max-age=60")

    # A later change leaves a complete page's entries alone; completing page 3 links page 2 to it.
    await publish(partner_client, story(2, 2))  # change 8
    again, again_body = await get(partner_client, first_links["self"])
    assert again.headers["ETag"] == first_response.headers["ETag"] and entries(fmt, again_body) == first
    await publish(partner_client, story(7))  # change 9: page 3 is complete
    response, body = await get(partner_client, second_links["self"])
    assert entries(fmt, body) == second
    assert parse_link_header(response.headers["Link"])["next-archive"].endswith("?archive=3")
    head, _ = await get(partner_client, f"/feeds/latest/{fmt}")
    assert parse_link_header(head.headers["Link"])["prev-archive"].endswith("?archive=3")


async def test_archive_refusals_and_newsml(partner_client):
    for n in range(1, 5):
        await publish(partner_client, story(n))
    for query, status in (("archive=2", 404), ("archive=0", 400), ("archive=x", 400), ("archive=1&since=1", 400)):
        response = await partner_client.get(f"/feeds/latest/atom?{query}")
        assert response.status == status, query
        assert response.content_type == "application/problem+json"
        assert (await response.json())["status"] == status
    assert (await (await partner_client.get("/feeds/latest/atom?archive=2")).json())["newestArchive"] == 1
    newsml = await partner_client.get("/feeds/latest/newsml?archive=1")
    assert newsml.status == 200
    links = parse_link_header(newsml.headers["Link"])
    assert links["current"].endswith("/feeds/latest/newsml") and "fh:" not in await newsml.text()


async def test_a_filtered_feeds_archive_shows_only_what_it_holds(partner_client):
    await publish(partner_client, story(1))
    await publish(partner_client, {**story(2), "language": "fr"})  # not in headlines (English only)
    await publish(partner_client, story(3))
    response = await partner_client.get("/feeds/headlines/atom?archive=1")
    assert response.status == 200
    ids = [e for e, _ in entries("atom", await response.read())]
    assert ids == ["https://news.example.com/archive/1", "https://news.example.com/archive/3"]


def _revision(**fields) -> Revision:
    moment = datetime.fromisoformat("2024-01-01T00:00:00+00:00")
    values = dict(article_id="a" * 16, uri="https://news.example.com/x", version=1, kind=NEW, signal=None,
                  first_created=moment, version_created=moment, ingested_at=moment, pub_status="usable",
                  embargoed_until=None, ed_note=None, publisher="newsroom", content_hash="sha256:x",
                  document={"uri": "https://news.example.com/x", "language": "en"})
    values.update(fields)
    return Revision(**values)


def test_which_revision_an_archive_page_shows():
    feed = FeedDefinition(name="latest", title="Latest", description="")
    at = datetime.fromisoformat("2024-01-02T00:00:00+00:00")
    embargoed = _revision(embargoed_until=datetime.fromisoformat("2024-01-03T00:00:00+00:00"))
    assert in_archive(feed, _revision(), NEW, at)
    assert in_archive(feed, _revision(kind=UPDATE), UPDATE, at)
    assert not in_archive(feed, _revision(pub_status=WITHHELD), UPDATE, at)
    assert not in_archive(feed, embargoed, NEW, at)  # under embargo when it was made: shown at its lift
    assert in_archive(feed, embargoed, EMBARGO_LIFT, datetime.fromisoformat("2024-01-03T00:00:01+00:00"))
    assert not in_archive(feed, _revision(), PURGE, at)
    assert not in_archive(feed, None, NEW, at)
