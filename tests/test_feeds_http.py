"""Feeds and items over real HTTP on a real Redis: content, corrections, kills, conditional GET,
compression, since cursors, caching and invalidation."""

from __future__ import annotations

import asyncio
import copy
import gzip

import brotli
import feedparser
import orjson
import pytest
import redis as redis_sync
from conftest import AUTH, app_server, make_partner
from render_helpers import newsml_errors, parse_xml
from yarl import URL

from server.domain.articles import article_id_for_uri
from server.domain.feeds import FeedDefinitionError, load_feed_definitions
from server.http.app import create_app
from server.http.state import FEED_BUILDER

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
NAR = "{http://iptc.org/std/nar/2006-10-01/}"


async def post(client, doc, query=""):
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()
    return await response.json()


def other_article(n: int, **fields) -> dict:
    doc = {
        "uri": f"https://news.example.com/other/{n}",
        "type": "text",
        "versionCreated": f"2024-01-01T00:00:{n:02d}Z",
        "language": "en",
        "headlines": [{"role": "main", "value": f"Other story {n}"}],
        "subjects": [{"name": "economy", "literal": "economy"}],
        "bodies": [{"role": "main", "contentType": "text/html", "value": f"<p>Body of story {n}</p>"}],
    }
    doc.update(fields)
    return doc


def next_cursor(response) -> int:
    for part in response.headers["Link"].split(","):
        url, _, rel = part.partition(";")
        if 'rel="next"' in rel:
            return int(url.strip(" <>").rsplit("since=", 1)[1])
    raise AssertionError("no rel=next link")


async def test_seed_in_every_format_then_the_correction(partner_client, seed_v1, seed_v2):
    await post(partner_client, seed_v1)
    atom = await partner_client.get("/feeds/latest/atom")
    assert atom.status == 200 and atom.content_type == "application/atom+xml"
    parsed = feedparser.parse(await atom.read())
    assert parsed.bozo == 0 and len(parsed.entries) == 1
    assert parsed.entries[0].id == seed_v1["uri"]
    assert "Nearly 200,00 people" in parsed.entries[0].content[0].value

    await post(partner_client, seed_v2, "?signal=correction")
    # read-your-writes: the very next GET on this process shows version 2
    atom = feedparser.parse(await (await partner_client.get("/feeds/latest/atom")).read())
    entry = atom.entries[0]
    assert "200,000 people" in entry.content[0].value
    assert "Correction: an earlier version" in entry.content[0].value
    assert entry.syndicate_version == "2" and entry.syndicate_signal == "correction"

    rss = await partner_client.get("/feeds/latest/rss")
    assert rss.content_type == "application/rss+xml"
    parsed = feedparser.parse(await rss.read())
    assert parsed.bozo == 0 and parsed.entries[0].id == seed_v1["uri"]
    assert "200,000 people" in parsed.entries[0].content[0].value

    newsml = await partner_client.get("/feeds/latest/newsml")
    assert newsml.content_type == "application/vnd.iptc.g2.newsmessage+xml"
    body = await newsml.read()
    assert newsml_errors(body) == []
    root = parse_xml(body)
    article = next(i for i in root.iter(f"{NAR}newsItem") if i.get("guid") == seed_v1["uri"])
    assert article.get("version") == "2"
    assert article.find(f"{NAR}itemMeta/{NAR}signal").get("qcode") == "sig:correction"

    json_feed = await partner_client.get("/feeds/latest/json")
    assert json_feed.content_type == "application/feed+json"
    document = orjson.loads(await json_feed.read())
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert document["items"][0]["_syndicate"]["version"] == 2


async def test_conditional_get_compression_and_head(partner_client, seed_v1):
    await post(partner_client, seed_v1)
    first = await partner_client.get("/feeds/latest/atom", headers={"Accept-Encoding": "identity"})
    identity = await first.read()
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and first.headers["Vary"] == "Accept-Encoding"
    assert "max-age=60" in first.headers["Cache-Control"]

    again = await partner_client.get("/feeds/latest/atom", headers={"If-None-Match": etag, "Accept-Encoding": "identity"})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag
    since = await partner_client.get("/feeds/latest/atom", headers={"If-Modified-Since": last_modified,
                                                              "Accept-Encoding": "identity"})
    assert since.status == 304

    gz = await partner_client.get("/feeds/latest/atom", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert gz.headers["Content-Encoding"] == "gzip" and gz.headers["ETag"] != etag
    assert gzip.decompress(await gz.read()) == identity
    br = await partner_client.get("/feeds/latest/atom", headers={"Accept-Encoding": "gzip, br"}, auto_decompress=False)
    assert br.headers["Content-Encoding"] == "br" and br.headers["ETag"] not in (etag, gz.headers["ETag"])
    assert brotli.decompress(await br.read()) == identity
    not_gzip = await partner_client.get("/feeds/latest/atom", headers={"Accept-Encoding": "gzip",
                                                                 "If-None-Match": etag}, auto_decompress=False)
    assert not_gzip.status == 200  # the identity ETag does not validate the gzip representation

    head = await partner_client.head("/feeds/latest/atom", headers={"Accept-Encoding": "identity"})
    assert head.status == 200 and head.headers["ETag"] == etag
    assert int(head.headers["Content-Length"]) == len(identity) and await head.read() == b""


async def test_since_cursor_returns_exactly_what_changed(partner_client, seed_v1, seed_v2):
    await post(partner_client, seed_v1)
    for n in range(3):
        await post(partner_client, other_article(n))
    first_poll = await partner_client.get("/feeds/latest/atom")
    cursor = next_cursor(first_poll)
    assert len(feedparser.parse(await first_poll.read()).entries) == 4

    nothing = await partner_client.get(f"/feeds/latest/atom?since={cursor}")
    assert feedparser.parse(await nothing.read()).entries == [] and next_cursor(nothing) == cursor
    empty_newsml = await partner_client.get(f"/feeds/latest/newsml?since={cursor}")
    assert empty_newsml.status == 204 and next_cursor(empty_newsml) == cursor

    await post(partner_client, seed_v2, "?signal=correction")
    page = await partner_client.get(f"/feeds/latest/atom?since={cursor}")
    entries = feedparser.parse(await page.read()).entries
    assert [e.id for e in entries] == [seed_v1["uri"]]
    assert entries[0].syndicate_version == "2"
    cursor = next_cursor(page)

    killed_id = article_id_for_uri(other_article(1)["uri"])
    assert (await partner_client.delete(f"/api/articles/{killed_id}", headers=AUTH)).status == 200
    page = await partner_client.get(f"/feeds/latest/newsml?since={cursor}")
    root = parse_xml(await page.read())
    items = [i for i in root.iter(f"{NAR}newsItem") if i.find(f"{NAR}itemMeta/{NAR}itemClass").get("qcode") == "ninat:text"]
    assert [i.get("guid") for i in items] == [other_article(1)["uri"]]
    assert items[0].find(f"{NAR}itemMeta/{NAR}pubStatus").get("qcode") == "stat:canceled"


async def test_since_pages_are_oldest_first_and_chain_without_gaps(partner_client, settings):
    for n in range(7):
        await post(partner_client, other_article(n))
    from dataclasses import replace

    # with a page limit of 3 changes, follow rel=next until it stops moving
    partner_client.server.app[FEED_BUILDER].settings = replace(settings, since_page_limit=3)
    seen, cursor = [], 0
    for _ in range(10):
        page = await partner_client.get(f"/feeds/latest/json?since={cursor}")
        items = orjson.loads(await page.read())["items"]
        seen += [i["id"] for i in items]
        new_cursor = next_cursor(page)
        if new_cursor == cursor:
            break
        cursor = new_cursor
    assert seen == [other_article(n)["uri"] for n in range(7)]


async def test_cursor_outside_the_log_is_410_and_bad_cursor_400(partner_client, settings, seed_v1):
    from datetime import timedelta

    from server.core.values import utc_now
    from server.http.state import STORE

    await post(partner_client, seed_v1)
    for n in range(3):
        await post(partner_client, other_article(n))
    future = await partner_client.get("/feeds/latest/atom?since=99")
    assert future.status == 410 and future.content_type == "application/problem+json"
    store = partner_client.server.app[STORE]
    await store.trim_changelog(timedelta(days=1), now=utc_now() + timedelta(days=2))  # keeps only seq 4
    expired = await partner_client.get("/feeds/latest/atom?since=1")
    assert expired.status == 410
    problem = await expired.json()
    assert "resynchronise" in problem["detail"] and problem["parameter"] == "since"
    assert (await partner_client.get("/feeds/latest/atom?since=3")).status == 200
    for bad in ("-1", "abc", "1.5"):
        response = await partner_client.get(f"/feeds/latest/atom?since={bad}")
        assert response.status == 400 and (await response.json())["parameter"] == "since"


async def test_order_kill_embargo_and_withheld(partner_client, seed_v1, seed_v2):
    await post(partner_client, seed_v1)
    await post(partner_client, other_article(1))
    await post(partner_client, other_article(2, embargoedUntil="2099-01-01T00:00:00Z"))
    await post(partner_client, other_article(3, pubStatus="withheld"))
    ids = [e.id for e in feedparser.parse(await (await partner_client.get("/feeds/latest/atom")).read()).entries]
    assert ids == [other_article(1)["uri"], seed_v1["uri"]]  # no embargoed, no withheld

    await post(partner_client, seed_v2, "?signal=correction")
    ids = [e.id for e in feedparser.parse(await (await partner_client.get("/feeds/latest/atom")).read()).entries]
    assert ids == [seed_v1["uri"], other_article(1)["uri"]]  # the correction is back on top

    await partner_client.delete(f"/api/articles/{article_id_for_uri(seed_v1['uri'])}", headers=AUTH)
    body = await (await partner_client.get("/feeds/latest/atom")).read()
    entry = feedparser.parse(body).entries[0]
    assert entry.id == seed_v1["uri"] and entry.title.startswith("Withdrawn")
    assert b"Putin" not in body and b"200,000" not in body
    world = await (await partner_client.get("/feeds/world/rss")).read()
    assert b"Withdrawn" in world and b"Putin" not in world  # the kill reaches the filtered feed too

    embargoed = article_id_for_uri(other_article(2)["uri"])
    assert (await partner_client.get(f"/items/{embargoed}")).status == 404
    assert (await partner_client.get(f"/items/{embargoed}/newsml")).status == 404


async def test_items(partner_client, seed_v1, seed_v2):
    article_id = (await post(partner_client, seed_v1))["id"]
    await post(partner_client, seed_v2, "?signal=correction")
    item = await partner_client.get(f"/items/{article_id}")
    assert item.status == 200 and item.headers["X-Syndicate-Version"] == "2"
    assert "200,000" in (await item.json())["bodies"][0]["value"]

    latest = await partner_client.get(f"/items/{article_id}/newsml")
    assert newsml_errors(await latest.read()) == []
    first = await partner_client.get(f"/items/{article_id}/newsml?version=1")
    body = await first.read()
    assert newsml_errors(body) == [] and b"Nearly 200,00 people" in body
    assert (await partner_client.get(f"/items/{article_id}/newsml?version=3")).status == 400
    etag = latest.headers["ETag"]
    assert (await partner_client.get(f"/items/{article_id}/newsml", headers={"If-None-Match": etag})).status == 304

    await partner_client.delete(f"/api/articles/{article_id}", headers=AUTH)
    tombstone = await partner_client.get(f"/items/{article_id}")
    assert tombstone.status == 200
    document = await tombstone.json()
    assert document["pubStatus"] == "canceled" and "bodies" not in document
    old = await partner_client.get(f"/items/{article_id}/newsml?version=1")
    old_body = await old.read()
    assert old.status == 200 and b"stat:canceled" in old_body and b"Putin" not in old_body
    assert newsml_errors(old_body) == []
    assert (await partner_client.get("/items/notanid")).status == 404


async def test_unknown_feed_or_format_lists_the_valid_ones(partner_client):
    response = await partner_client.get("/feeds/sport/atom")
    assert response.status == 404 and set((await response.json())["feeds"]) == {"latest", "world", "headlines"}
    response = await partner_client.get("/feeds/latest/xml")
    assert response.status == 404 and (await response.json())["formats"] == ["rss", "atom", "newsml", "json"]
    public = await partner_client.get("/feeds/headlines/rss", headers={"X-API-Key": ""})
    assert public.headers["Cache-Control"].startswith("public")
    private = await partner_client.get("/feeds/world/rss")
    assert private.headers["Cache-Control"].startswith("private")


async def test_a_change_invalidates_exactly_the_feeds_it_touches(partner_client, sync_redis, seed_v1):
    def generations():
        return {name: int(sync_redis.get(f"syn:feed:{name}:generation") or 0) for name in ("latest", "world", "headlines")}

    before = generations()
    await post(partner_client, other_article(1))  # economy, English: latest and headlines, not world
    after = generations()
    assert after["latest"] == before["latest"] + 1 and after["headlines"] == before["headlines"] + 1
    assert after["world"] == before["world"]

    await post(partner_client, seed_v1)  # armed conflict: world too
    assert generations()["world"] == after["world"] + 1

    moved = copy.deepcopy(other_article(1, versionCreated="2024-02-01T00:00:00Z", language="fr"))
    before = generations()
    await post(partner_client, moved)  # leaves headlines (now French): headlines must still be invalidated
    after = generations()
    assert after["headlines"] == before["headlines"] + 1 and after["world"] == before["world"]


async def test_cached_get_makes_no_redis_round_trip(partner_client, redis_url, seed_v1):
    await post(partner_client, seed_v1)
    assert (await partner_client.get("/feeds/latest/atom")).status == 200  # warm
    probe = redis_sync.Redis.from_url(redis_url)

    def calls() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in probe.info("commandstats").items()}

    before = calls()
    for _ in range(50):
        response = await partner_client.get("/feeds/latest/atom")
        assert response.status == 200
    await asyncio.sleep(0.3)  # let the ledger flush
    after = calls()
    # Background work (ledger and rate-limit flushes, pub/sub resyncs, the push worker's polls) runs a
    # few commands of its own; a round trip per request would show up as 50 or more of one command.
    per_command = {k: after[k] - before.get(k, 0) for k in after}
    assert max(per_command.values()) < 25, per_command


async def test_concurrent_misses_render_once(partner_client, seed_v1):
    await post(partner_client, seed_v1)
    builder = partner_client.server.app[FEED_BUILDER]
    calls = 0
    original = builder.build

    async def counting_build(*args, **kwargs):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await original(*args, **kwargs)

    builder.build = counting_build
    responses = await asyncio.gather(*(partner_client.get("/feeds/latest/rss") for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert calls == 1
    assert len({r.headers["ETag"] for r in responses}) == 1


def test_broken_feed_definitions_name_file_and_field(tmp_path):
    (tmp_path / "ok.toml").write_text('title = "OK"\n')
    assert set(load_feed_definitions(tmp_path)) == {"latest", "ok"}
    cases = {
        "bad-toml.toml": ("title = ", "not valid TOML"),
        "no-title.toml": ('description = "x"\n', "title: is required"),
        "bad-limit.toml": ('title = "x"\nlimit = 0\n', "limit:"),
        "bad-public.toml": ('title = "x"\npublic = "yes"\n', "public:"),
        "bad-filter.toml": ('title = "x"\n[filters]\nsubject = ["a"]\n', "filters.subject:"),
        "bad-list.toml": ('title = "x"\n[filters]\nplaces = "Ukraine"\n', "filters.places:"),
        "Bad Name.toml": ('title = "x"\n', "name:"),
        "extra.toml": ('title = "x"\ncolour = "red"\n', "colour:"),
    }
    for file_name, (text, needle) in cases.items():
        folder = tmp_path / file_name.replace(".toml", "")
        folder.mkdir()
        (folder / file_name).write_text(text)
        with pytest.raises(FeedDefinitionError) as error:
            load_feed_definitions(folder)
        assert file_name in str(error.value) and needle in str(error.value), str(error.value)


async def test_embargo_lifts_once_into_feeds_and_since_pages(aiohttp_client, settings, redis_url, sync_redis):
    from datetime import timedelta

    from server.core.values import iso, utc_now

    key = await make_partner(redis_url)
    first = await aiohttp_client(create_app(settings), headers={"X-API-Key": key})
    second = await aiohttp_client(create_app(settings), headers={"X-API-Key": key})  # races to lift it too
    await post(first, other_article(1))
    cursor = next_cursor(await first.get("/feeds/latest/atom"))
    embargoed = other_article(2, embargoedUntil=iso(utc_now() + timedelta(seconds=1.5)))
    await post(first, embargoed)
    embargoed_id = article_id_for_uri(embargoed["uri"])
    assert (await first.get(f"/items/{embargoed_id}")).status == 404
    page = feedparser.parse(await (await first.get(f"/feeds/latest/atom?since={cursor}")).read())
    assert page.entries == []

    deadline = asyncio.get_running_loop().time() + 10
    ids: list[str] = []
    while asyncio.get_running_loop().time() < deadline:
        ids = [e.id for e in feedparser.parse(await (await second.get("/feeds/latest/atom")).read()).entries]
        if embargoed["uri"] in ids:
            break
        await asyncio.sleep(0.05)
    assert ids[0] == embargoed["uri"]  # released on top
    page = feedparser.parse(await (await first.get(f"/feeds/latest/atom?since={cursor}")).read())
    assert [e.id for e in page.entries] == [embargoed["uri"]]
    assert (await first.get(f"/items/{embargoed_id}")).status == 200
    await asyncio.sleep(0.5)
    lifts = [f for _id, f in sync_redis.xrange("syn:changelog") if f["kind"] == "embargo-lift"]
    assert [f["id"] for f in lifts] == [embargoed_id]  # exactly once, though two processes watched


async def test_only_head_pages_and_recent_cursor_pages_are_cached(partner_client, sync_redis):
    """A client walking old cursors gets every page it asks for, and fills no cache; the head and the
    pages near it are kept, and a page's render at the previous generation is dropped."""
    from server.http.state import FEED_CACHE

    partner_client.server.app[FEED_CACHE].recent_cursor_changes = 2
    for n in range(1, 7):
        await post(partner_client, other_article(n))
    for since in (0, 1, 2):  # far behind the head (6)
        assert (await partner_client.get(f"/feeds/latest/json?since={since}")).status == 200
    assert (await partner_client.get("/feeds/latest/json?since=5")).status == 200
    assert (await partner_client.get("/feeds/latest/json")).status == 200
    cached = sorted(k.split(":")[-1] for k in sync_redis.keys("syn:cache:feed:*:latest:*"))
    assert cached == ["head", "since-5"], cached
    await post(partner_client, other_article(7))
    assert (await partner_client.get("/feeds/latest/json")).status == 200
    heads = sync_redis.keys("syn:cache:feed:*:latest:*:head")
    assert len(heads) == 1  # the render at the previous generation went when the new one was stored


@pytest.mark.parametrize("bound", [16_000, 1])
async def test_the_memory_cache_stays_within_its_bound_and_evicts_the_least_recently_used(
        aiohttp_client, settings, redis_url, bound):
    """SYNDICATE_MEMORY_CACHE_MB as bytes: more distinct pages than fit are rendered; the pages held in
    memory never add up to more than the bound (but for one page larger than the bound, kept alone),
    the oldest go first, a page read again moves to the back, and an evicted page is still served."""
    import dataclasses

    from server.http.state import FEED_CACHE

    key = await make_partner(redis_url)
    client = await aiohttp_client(app_server(dataclasses.replace(settings, memory_cache_bytes=bound)),
                                  headers={"X-API-Key": key})
    cache = client.server.app[FEED_CACHE]
    for n in range(1, 4):
        await post(client, other_article(n))

    def held() -> list[str]:
        return [page_url(*memory_key) for memory_key, _size in cache.in_memory()]

    def within_bound() -> None:
        sizes = [size for _key, size in cache.in_memory()]
        assert sum(sizes) <= bound or len(sizes) == 1, sizes

    requested, etags, rendered = [], {}, 0
    for fmt in ("atom", "rss", "json", "newsml"):
        for since in (None, 0, 1, 2):
            url = f"/feeds/latest/{fmt}" + ("" if since is None else f"?since={since}")
            response = await client.get(url)
            assert response.status == 200, url
            requested.append(url)
            etags[url] = response.headers["ETag"]
            assert held()[-1] == url  # the newest page is always kept
            rendered += dict(cache.in_memory())[("latest", "full", fmt, "head" if since is None else f"since-{since}")]
            within_bound()
    assert rendered > 2 * bound  # far more was rendered than fits
    kept = held()
    assert 1 <= len(kept) < len(requested) and kept == requested[-len(kept):]  # the oldest were evicted
    if bound == 1:
        assert kept == requested[-1:]

    if len(kept) >= 2:  # read the oldest kept page again: it moves to the back, and is not the next to go
        touched = kept[0]
        assert (await client.get(touched)).status == 200
        assert held() == [*kept[1:], touched]
        assert (await client.get("/feeds/world/atom")).status in (200, 204)
        after = held()
        assert touched in after and after[-1] == "/feeds/world/atom"
        evicted = [url for url in kept[1:] if url not in after]
        assert evicted == kept[1:1 + len(evicted)]  # a prefix: least recently used first
        within_bound()
    first = await client.get(requested[0])  # evicted long ago: rendered again from Redis, the same bytes
    assert first.status == 200 and first.headers["ETag"] == etags[requested[0]]
    within_bound()


def page_url(feed: str, _variant: str, fmt: str, page: str) -> str:
    return f"/feeds/{feed}/{fmt}" + ("" if page == "head" else f"?since={page.removeprefix('since-')}")


async def test_a_public_answer_varies_on_the_key_headers(client, seed_v1):
    """A shared cache may keep the public page; a partner without photo rights presenting its key gets
    another representation, so the cache must not answer it with the stored one."""
    await post(client, seed_v1)
    public = await client.get("/feeds/headlines/rss")
    assert public.headers["Cache-Control"].startswith("public")
    assert public.headers["Vary"] == "Accept-Encoding, Authorization, X-API-Key"


async def test_a_reader_by_url_key_gets_links_with_its_key_and_no_cached_page_holds_it(client, redis_url,
                                                                                        sync_redis, seed_v1):
    """Issue 12: a partner that authenticates by ?key= can follow self and next (and every other feed
    link but the hub); the key is only in its own answer's Link header, never in a cached body or head."""
    from push_helpers import parse_link_header

    acme = await make_partner(redis_url, "acme", feeds=["latest"], formats=["*"])
    other = await make_partner(redis_url, "other", feeds=["latest"], formats=["*"])
    await post(client, seed_v1)
    for fmt in ("atom", "rss", "json", "newsml"):
        for _ in range(3):  # the route renders, then memory answers (the fast path on a kept-alive connection)
            response = await client.get(f"/feeds/latest/{fmt}?key={acme}")
            assert response.status == 200, fmt
            links = parse_link_header(response.headers["Link"])
            assert links["self"].endswith(f"/feeds/latest/{fmt}?key={acme}"), links
            assert "?since=" in links["next"] and links["next"].endswith(f"&key={acme}"), links
            assert "key=" not in links["hub"]
            assert response.headers["Cache-Control"].startswith("private")
            body = await response.read()
            assert acme.encode() not in body
        followed = await client.get(URL(links["next"]).path_qs)
        assert followed.status in (200, 204), fmt  # an empty NewsML page is 204
        assert parse_link_header(followed.headers["Link"])["self"].endswith(f"&key={acme}")
        by_header = await client.get(f"/feeds/latest/{fmt}", headers={"X-API-Key": other})
        assert "key=" not in by_header.headers["Link"]
        assert await by_header.read() == body  # the same shared page
    raw = redis_sync.Redis.from_url(redis_url)
    for cache_key in raw.keys("syn:cache:*"):
        assert all(acme.encode() not in value for value in raw.hgetall(cache_key).values())
