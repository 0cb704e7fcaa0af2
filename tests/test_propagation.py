"""Issue 11, items 1, 5 and 6, against a real Redis: corrections and kills follow the story to everyone
who had it (webhook, poll and item), a partner that lost the entitlement gets the withdrawal or the kill
and never the content, the summaries agree with a full recomputation, paging and grouping, and a
partner's own status."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime

import orjson
import redis as redis_sync
from conftest import ADMIN, AUTH, ROOT, cli_env, make_partner, run_cli
from push_helpers import Behaviour, Subscriber, wait_for

from server.core import keys
from server.core.redis_connection import connect
from server.domain.access import may_read_item
from server.domain.articles import Revision, article_id_for_uri
from server.domain.feeds import load_feed_definitions
from server.http.app import create_app
from server.http.state import SETTINGS
from server.partners.store import PartnerStore
from server.push.destinations import DestinationStore, new_webhook
from server.push.payloads import delivery_id
from server.push.queue import Claim, PushQueue

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
SECRET = "s3cret-for-the-tests-0123456789"
FEEDS = load_feed_definitions(ROOT / "feeds")


def refiled(doc: dict, n: int = 2) -> dict:
    """A correction that moves the story out of world (no subjects) and out of the public headlines
    (French): only `latest` holds it."""
    return {**doc, "subjects": [], "language": "fr", "versionCreated": f"2030-01-0{n}T00:00:00Z",
            "headlines": [{"role": "main", "value": f"Re-filed secret {n}"}]}


async def publish(client, doc, query=""):
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def partner(client, name, **body) -> str:
    response = await client.post("/api/partners", data=orjson.dumps({"name": name, **body}), headers=ADMIN_JSON)
    assert response.status == 201, await response.text()
    return (await response.json())["key"]


async def flow(client, query="") -> dict:
    response = await client.get(f"/api/propagation{query}", headers=ADMIN)
    assert response.status == 200, await response.text()
    return await response.json()


def rows(report: dict) -> dict[tuple[str, int], dict[str, tuple[bool, str]]]:
    return {(i["id"], i["version"]): {p["partner"]: (p["received"], p["delivery"]) for p in i["partners"]}
            for i in report["items"]}


# ----- item 1: the rule, through push, polls and items -------------------------------------------------

async def test_a_webhook_that_had_the_story_gets_the_withdrawal_and_the_kill_never_the_content(push, seed_v1):
    async with Subscriber() as receiver:
        await partner(push, "acme", feeds=["world"], formats=["*"])
        await partner(push, "late", feeds=["world"], formats=["*"])  # never had it
        created = await push.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
            {"url": receiver.url(), "format": "ninjs", "secret": SECRET}))
        assert created.status == 201
        await publish(push, seed_v1)  # in world
        await wait_for(lambda: receiver.delivered, message="v1")
        article = article_id_for_uri(seed_v1["uri"])
        with redis_sync.Redis.from_url(push.server.app[SETTINGS].redis_address.url, decode_responses=True) as redis:
            # The push's receipt is flushed within 100 ms (issue 11 item 2 makes it part of the ack).
            await wait_for(lambda: redis.hexists(keys.partner_received("acme"), article), message="the receipt")

        await publish(push, refiled(seed_v1), "?signal=correction")  # out of every feed acme reads
        await wait_for(lambda: len(receiver.delivered) >= 2, message="the withdrawal")
        withdrawal = receiver.delivered[1]
        body = orjson.loads(withdrawal.body)
        assert body["pubStatus"] == "canceled" and body["uri"] == seed_v1["uri"] and "Withdrawn" in body["edNote"]
        assert b"Re-filed secret" not in withdrawal.body and "headlines" not in body and "subjects" not in body
        assert withdrawal.headers["X-Syndicate-Delivery"] == delivery_id(created_id := (await created.json())["id"],
                                                                         article, 2)

        async def listed():
            return rows(await flow(push)).get((article, 2)) == {"acme": (True, "withdrawal")}

        assert await wait_for(listed, message="acme listed, received (and not `late`)")

        kill = await push.delete(f"/api/articles/{article}", headers=AUTH)
        assert kill.status == 200
        await wait_for(lambda: len(receiver.delivered) >= 3, message="the kill")
        killed = orjson.loads(receiver.delivered[2].body)
        assert killed["pubStatus"] == "canceled" and receiver.delivered[2].headers["X-Syndicate-Delivery"] == \
            delivery_id(created_id, article, 3)
        assert b"Re-filed secret" not in receiver.delivered[2].body

        async def kill_received():
            return rows(await flow(push)).get((article, 3)) == {"acme": (True, "kill")}

        assert await wait_for(kill_received, message="the kill received by acme")


async def test_a_correction_judged_while_the_first_push_is_in_flight_still_reaches_that_partner(push, seed_v1):
    """acme's webhook is still answering v1 (no receipt yet) when v2 moves the story out of its feeds:
    v1 on its way counts as having the story, so acme gets v2's withdrawal after v1, and is listed."""
    async with Subscriber(Behaviour(delay_first=3.0)) as receiver:
        await partner(push, "acme", feeds=["world"], formats=["*"])
        created = await push.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
            {"url": receiver.url(), "format": "ninjs", "secret": SECRET}))
        assert created.status == 201
        await publish(push, seed_v1)
        await wait_for(lambda: receiver.posts, message="v1 on its way")
        await publish(push, refiled(seed_v1), "?signal=correction")
        article = article_id_for_uri(seed_v1["uri"])
        await wait_for(lambda: len(receiver.delivered) >= 2, timeout=20, message="v1, then v2's withdrawal")
        first, second = (orjson.loads(r.body) for r in receiver.delivered[:2])
        assert first["headlines"] and second["pubStatus"] == "canceled" and "Withdrawn" in second["edNote"]
        assert receiver.delivered[1].headers["X-Syndicate-Delivery"] == delivery_id(
            (await created.json())["id"], article, 2)

        async def listed():
            return rows(await flow(push)).get((article, 2)) == {"acme": (True, "withdrawal")}

        assert await wait_for(listed, message="acme listed for v2, received")


async def test_a_partner_enabled_again_is_sent_the_kill_dispatched_while_it_was_disabled(push, seed_v1):
    """acme had the story, was disabled, and the story was killed meanwhile: nothing is pushed to a
    disabled partner, but once enabled again it is owed the kill (pushed, and listed in the report);
    `late`, disabled and enabled the same way, never had the story and is sent nothing."""
    async with Subscriber() as receiver, Subscriber() as late_receiver:
        for name, target in (("acme", receiver), ("late", late_receiver)):
            await partner(push, name, feeds=["world"], formats=["*"])
            created = await push.post(f"/api/partners/{name}/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
                {"url": target.url(), "format": "ninjs", "secret": SECRET}))
            assert created.status == 201
        await partner(push, "other", feeds=["world"], formats=["*"])  # a poller that stays enabled
        article = article_id_for_uri(seed_v1["uri"])
        await publish(push, seed_v1)
        await wait_for(lambda: receiver.delivered and late_receiver.delivered, message="v1 to both")
        with redis_sync.Redis.from_url(push.server.app[SETTINGS].redis_address.url, decode_responses=True) as redis:
            await wait_for(lambda: redis.hexists(keys.partner_received("acme"), article), message="the receipt")
            redis.hdel(keys.partner_received("late"), article)  # as if late had never had the story

        async def enabled(name: str, active: bool) -> None:
            response = await push.patch(f"/api/partners/{name}", headers=ADMIN_JSON,
                                        data=orjson.dumps({"active": active}))
            assert response.status == 200, await response.text()

        await enabled("acme", False)
        await enabled("late", False)
        assert (await push.delete(f"/api/articles/{article}", headers=AUTH)).status == 200

        async def judged():  # the kill was dispatched (and judged) while both were disabled
            return (article, 2) in rows(await flow(push))

        await wait_for(judged, message="the kill dispatched")
        assert rows(await flow(push))[(article, 2)] == {"other": (False, "kill")}
        assert len(receiver.delivered) == 1

        await enabled("acme", True)
        await enabled("late", True)
        await wait_for(lambda: len(receiver.delivered) >= 2, timeout=20, message="the kill, once enabled")
        assert orjson.loads(receiver.delivered[1].body)["pubStatus"] == "canceled"

        async def listed():
            return rows(await flow(push)).get((article, 2)) == {"acme": (True, "kill"), "other": (False, "kill")}

        assert await wait_for(listed, message="acme listed for the kill, received")
        with redis_sync.Redis.from_url(push.server.app[SETTINGS].redis_address.url, decode_responses=True) as redis:
            await wait_for(lambda: not redis.exists(keys.partners_reactivated()), message="the notes done")
        assert len(late_receiver.delivered) == 1  # never had it (as far as its receipts say): nothing


async def test_a_poller_that_had_the_story_gets_the_withdrawal_at_items_and_is_listed(client, seed_v1):
    key = await partner(client, "poller", feeds=["world"], formats=["atom", "newsml", "json"])
    stranger = await partner(client, "stranger", feeds=["world"], formats=["atom", "newsml", "json"])
    reader = await partner(client, "reader", feeds=["latest"], formats=["atom", "newsml", "json"])
    await publish(client, seed_v1)
    article = article_id_for_uri(seed_v1["uri"])
    assert (await client.get("/feeds/world/atom", headers={"X-API-Key": key})).status == 200  # has v1
    await publish(client, refiled(seed_v1), "?signal=correction")

    report = await flow(client)
    assert rows(report)[(article, 2)] == {"poller": (False, "withdrawal"), "reader": (False, "content")}
    status = await (await client.get("/api/partners/poller/status", headers=ADMIN)).json()
    assert [(a["version"], a["received"], a["delivery"]) for a in status["articles"]] == [(2, False, "withdrawal")]

    item = await client.get(f"/items/{article}", headers={"X-API-Key": key})
    assert item.status == 200 and item.headers["X-Syndicate-Version"] == "2"
    body = await item.json()
    assert body["pubStatus"] == "canceled" and "headlines" not in body and "Withdrawn" in body["edNote"]
    newsml = await client.get(f"/items/{article}/newsml", headers={"X-API-Key": key})
    text = await newsml.text()
    assert newsml.status == 200 and "stat:canceled" in text and "Re-filed secret" not in text
    # One that never had it is refused as before; one entitled to the new revision gets its content.
    assert (await client.get(f"/items/{article}", headers={"X-API-Key": stranger})).status == 403
    content = await client.get(f"/items/{article}", headers={"X-API-Key": reader})
    assert content.status == 200 and "Re-filed secret" in (await content.json())["headlines"][0]["value"]
    # An explicit older version the poller may no longer read is still refused.
    assert (await client.get(f"/items/{article}/newsml?version=2", headers={"X-API-Key": key})).status == 200

    report = await flow(client)
    assert rows(report)[(article, 2)] == {"poller": (True, "withdrawal"), "reader": (True, "content")}
    assert report["outstanding"] == 0


async def head_cursor(client, feed: str) -> str:
    """The cursor a head page hands out now, read as the admin (no receipts)."""
    page = await (await client.get(f"/feeds/{feed}/json", headers=ADMIN)).json()
    return page["next_url"].rpartition("?")[2]


async def test_a_cursor_poll_acknowledges_the_changes_since_the_readers_last_cursor(client, seed_v1):
    """``?since=N`` after ``?since=L`` is an offset commit (issue 11, item 2): the reader got the pages
    between, so a page whose receipts were lost (the process that served it died before its flush) is
    healed by the next cursor poll, on any process. Only what that feed's since pages show counts:
    world never showed the re-filed v2."""
    both = await partner(client, "follower", feeds=["latest", "world"], formats=["json"])
    reader = {"X-API-Key": both}
    await publish(client, seed_v1)
    article = article_id_for_uri(seed_v1["uri"])
    assert (await client.get("/feeds/world/json", headers=reader)).status == 200  # has v1
    before = {feed: await head_cursor(client, feed) for feed in ("world", "latest")}
    for feed in ("world", "latest"):  # the reader's cursors L, before v2 (nothing after them yet)
        assert (await client.get(f"/feeds/{feed}/json?{before[feed]}", headers=reader)).status == 200
    await publish(client, refiled(seed_v1), "?signal=correction")  # in latest only
    assert rows(await flow(client))[(article, 2)] == {"follower": (False, "content")}

    # The pages (L, N] holding v2 were served by a process that then died: only their cursors N come back.
    after = {feed: await head_cursor(client, feed) for feed in ("world", "latest")}
    assert (await client.get(f"/feeds/world/json?{after['world']}", headers=reader)).status == 200
    assert rows(await flow(client))[(article, 2)] == {"follower": (False, "content")}  # world never showed v2
    latest = await client.get(f"/feeds/latest/json?{after['latest']}", headers=reader)
    assert latest.status == 200 and (await latest.json())["items"] == []  # nothing after the cursor
    assert rows(await flow(client))[(article, 2)] == {"follower": (True, "content")}


async def test_a_cursor_from_a_head_page_acknowledges_nothing(aiohttp_client, settings, tmp_path, seed_v1):
    """A head page shows the newest items, not every change before its cursor: a reader that follows a
    head page's next_url has not seen a correction that fell off it (limit 2 here)."""
    feeds = tmp_path / "feeds"
    shutil.copytree(ROOT / "feeds", feeds)
    (feeds / "small.toml").write_text('title = "Small"\ndescription = "Two items"\npublic = false\nlimit = 2\n')
    client = await aiohttp_client(create_app(dataclasses.replace(settings, feeds_dir=feeds)))
    reader = {"X-API-Key": await partner(client, "jumper", feeds=["small"], formats=["json"])}
    await publish(client, seed_v1)
    article = article_id_for_uri(seed_v1["uri"])
    assert (await client.get("/feeds/small/json", headers=reader)).status == 200  # has v1
    await publish(client, refiled(seed_v1), "?signal=correction")
    for n in (1, 2):  # two newer stories push the correction off the two-item head page
        await publish(client, {**seed_v1, "uri": f"{seed_v1['uri']}-other-{n}"})
    assert rows(await flow(client))[(article, 2)] == {"jumper": (False, "content")}
    head = await (await client.get("/feeds/small/json", headers=reader)).json()
    assert article not in {i["id"].rpartition("/")[2] for i in head["items"]} and len(head["items"]) == 2
    page = await client.get("/feeds/small/json?" + head["next_url"].rpartition("?")[2], headers=reader)
    assert page.status == 200 and (await page.json())["items"] == []
    assert rows(await flow(client))[(article, 2)] == {"jumper": (False, "content")}


async def test_a_correction_that_stays_in_the_feed_reaches_the_poller_as_content(client, seed_v1, seed_v2):
    key = await partner(client, "poller", feeds=["world"], formats=["atom"])
    await publish(client, seed_v1)
    assert (await client.get("/feeds/world/atom", headers={"X-API-Key": key})).status == 200
    await publish(client, seed_v2, "?signal=correction")
    article = article_id_for_uri(seed_v1["uri"])
    assert rows(await flow(client))[(article, 2)] == {"poller": (False, "content")}


# ----- item 5: the summaries against a full recomputation ---------------------------------------------

async def oracle(redis_url: str, had: dict[str, set[str]]) -> tuple[dict, dict, dict]:
    """The whole thing recomputed from the change log, the revisions and the receipts: per partner what it
    must receive (the rule, with ``had``: what each had received before the changes) and what is
    outstanding, and per correction or kill how many partners have not received it."""
    redis = await connect(redis_url)
    try:
        partners = (await PartnerStore(redis, FEEDS).load_all())[0]
        required: dict[str, dict[str, int]] = {p.name: {} for p in partners}
        items: dict[tuple[str, int], set[str]] = {}
        for _entry, fields in await redis.xrange(keys.changelog()):
            if fields["kind"] not in ("update", "correction", "kill"):
                continue
            revision = Revision.from_json(await redis.hget(keys.revisions(fields["id"]), fields["version"]))
            for p in partners:
                if p.active and (may_read_item(p, revision, FEEDS.values()) or fields["id"] in had[p.name]):
                    required[p.name][fields["id"]] = revision.version
                    if fields["kind"] in ("correction", "kill"):
                        items.setdefault((fields["id"], revision.version), set()).add(p.name)
        received = {p.name: {a: int(v.partition("|")[0]) for a, v in
                             (await redis.hgetall(keys.partner_received(p.name))).items()} for p in partners}
        outstanding = {name: {a for a, v in owed.items() if received[name].get(a, 0) < v}
                       for name, owed in required.items()}
        item_outstanding = {item: sum(1 for n in names if received[n].get(item[0], 0) < item[1])
                            for item, names in items.items()}
        return required, outstanding, item_outstanding
    finally:
        await redis.aclose()


async def test_the_summaries_agree_with_a_full_recomputation(aiohttp_client, settings, redis_url, sync_redis,
                                                             seed_v1):
    # No workers: each view records the requirements of the changes no dispatcher took (catch-up).
    client = await aiohttp_client(create_app(dataclasses.replace(settings, run_workers=False)))
    keys_ = {name: await partner(client, name, feeds=feeds, formats=["atom"]) for name, feeds in
             (("w", ["world"]), ("l", ["latest"]), ("h", ["headlines"]), ("x", ["world"]))}
    await partner(client, "off", feeds=["*"], formats=["*"])
    await client.patch("/api/partners/off", data=orjson.dumps({"active": False}), headers=ADMIN_JSON)
    english = seed_v1
    french = {**seed_v1, "uri": seed_v1["uri"] + "-fr", "language": "fr"}  # world, not the public headlines
    other = {**seed_v1, "uri": seed_v1["uri"] + "-3", "subjects": [], "language": "de"}  # latest only
    for doc in (english, french, other):
        await publish(client, doc)
    for name, feed in (("w", "world"), ("l", "latest"), ("h", "headlines")):
        assert (await client.get(f"/feeds/{feed}/atom", headers={"X-API-Key": keys_[name]})).status == 200
    assert (await client.get("/api/status", headers=ADMIN)).status == 200  # flushed: the receipts are in
    had = {name: set(sync_redis.hkeys(keys.partner_received(name))) for name in ("w", "l", "h", "x", "off")}

    steps = [(english, "?signal=correction", {"headlines": [{"role": "main", "value": "Corrected"}],
                                             "versionCreated": "2030-01-01T00:00:00Z"}),
             (french, "?signal=correction", refiled(french)),  # out of world: w had it
             (other, "?signal=update", {"versionCreated": "2030-01-01T00:00:00Z", "slugline": "x"})]
    for doc, query, change in steps:
        await publish(client, {**doc, **change}, query)
        assert (await client.get("/api/status", headers=ADMIN)).status == 200  # recorded before the next
    assert (await client.delete(f"/api/articles/{article_id_for_uri(english['uri'])}", headers=AUTH)).status == 200
    assert (await client.get("/api/status", headers=ADMIN)).status == 200
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": keys_["l"]})).status == 200  # l catches up

    status = await (await client.get("/api/status", headers=ADMIN)).json()
    report = await flow(client)
    required, outstanding, item_outstanding = await oracle(redis_url, had)
    for name in ("w", "l", "h", "x", "off"):
        assert {a: int(v) for a, v in sync_redis.hgetall(keys.partner_required(name)).items()} == required[name], name
        assert set(sync_redis.zrange(keys.partner_outstanding(name), 0, -1)) == outstanding[name], name
    assert {row["partner"]: row["outstanding"] for row in status["partners"]} == \
        {name: len(outstanding[name]) for name in ("w", "l", "h", "x", "off")}
    assert {(i["id"], i["version"]): i["outstanding"] for i in report["items"]} == item_outstanding
    assert report["outstanding"] == sum(item_outstanding.values()) and report["totalItems"] == len(item_outstanding)
    assert outstanding["l"] == set() and outstanding["w"]  # the withdrawal is owed to w
    # x never polled: it owes the English story's kill (world holds the kill), not the French withdrawal
    assert set(required["x"]) == {article_id_for_uri(english["uri"])}

    # Each partner's pending items (what /metrics reads) are the items' pending sets seen from its side,
    # kept in the same steps; and reconciled with them by the maintenance when they are not (an upgrade,
    # a process of an older version that settled or recorded without them, an older copy of Redis).
    def pending_by_partner() -> dict[tuple[str, str], set[str]]:
        seen: dict[tuple[str, str], set[str]] = {}
        for member in sync_redis.zrange(keys.propagation_items(), 0, -1):
            article_id, _, version = member.partition("|")
            kind = sync_redis.hget(keys.propagation_item(article_id, int(version)), "kind")
            for name in sync_redis.smembers(keys.propagation_pending(article_id, int(version))):
                seen.setdefault((name, kind), set()).add(member)
        return seen

    def indexed() -> dict[tuple[str, str], set[str]]:
        return {(name, kind): members for name in ("w", "l", "h", "x", "off") for kind in ("correction", "kill")
                if (members := set(sync_redis.zrange(keys.partner_pending_items(name, kind), 0, -1)))}

    expected = pending_by_partner()
    assert expected and indexed() == expected
    for name in ("w", "l", "h", "x"):
        sync_redis.delete(*(keys.partner_pending_items(name, kind) for kind in ("correction", "kill")))
    sync_redis.zadd(keys.partner_pending_items("l", "kill"), {"gone|3": 1})  # settled by an older process
    from server.partners.propagation import Requirements
    redis = await connect(redis_url)
    items = len(sync_redis.zrange(keys.propagation_items(), 0, -1))
    try:  # a pair per Lua step: the steps go on from where the last stopped
        assert await Requirements(redis).reconcile_partner_index(["w", "l", "h", "x", "off"], 1) == (items, 1)
        assert indexed() == expected
        assert await Requirements(redis).reconcile_partner_index(["w", "l", "h", "x", "off"]) == (items, 0)
    finally:
        await redis.aclose()
    assert indexed() == expected
    scrape = (await (await client.get("/metrics", headers=ADMIN)).read()).decode()
    for (name, kind), members in expected.items():
        if name != "off":  # /metrics shows active partners only
            assert f'syndicate_outstanding_revisions{{kind="{kind}",partner="{name}"}} {len(members)}.0' in scrape


# ----- item 5: paging, grouping, retry all ----------------------------------------------------------------

async def test_failed_deliveries_grouped_by_destination_and_retried_all_at_once(aiohttp_client, settings,
                                                                                 redis_url, seed_v1, tmp_path):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, run_workers=False)))
    await make_partner(redis_url, "acme")
    docs = [{**seed_v1, "uri": f"{seed_v1['uri']}-{n}"} for n in range(3)]
    for doc in docs:
        await publish(client, doc)
    redis = await connect(redis_url)
    try:
        hooks = [await DestinationStore(redis).save(new_webhook("acme", f"https://hooks{n}.example/in", "ninjs",
                                                                "s" * 32)) for n in range(2)]
        queue = PushQueue(redis)
        for n, (hook, doc) in enumerate([(hooks[0], docs[0]), (hooks[0], docs[1]), (hooks[1], docs[2])]):
            article = article_id_for_uri(doc["uri"])
            await queue.enqueue([hook.id], article, 1)
            await queue.give_up(Claim(hook.id, article), 1, {
                "delivery": delivery_id(hook.id, article, 1), "kind": "webhook", "destination": hook.id,
                "partner": "acme", "url": hook.url, "article": article, "version": 1, "attempts": 3,
                "firstAttemptAt": f"2026-01-01T0{n}:00:00Z", "lastAttemptAt": f"2026-01-01T0{n}:30:00Z",
                "lastStatus": 400, "lastError": "bad"})
        from server.http.dashboard import COOKIE

        response = await client.post("/ops/login", data={"token": ADMIN["Authorization"][7:]}, allow_redirects=False)
        assert response.status == 303 and COOKIE in response.cookies
        page = await (await client.get("/ops")).text()
        assert f'data-destination="{hooks[0].id}" data-count="2"' in page
        assert f'data-destination="{hooks[1].id}" data-count="1"' in page
        assert page.count(">Retry all</button>") == 2

        assert (await client.post("/api/destinations/wh-0000000000000000/retry", headers=ADMIN)).status == 404
        assert (await client.post("/api/destinations/nope/retry", headers=ADMIN)).status == 404
        assert (await client.post(f"/api/destinations/{hooks[0].id}/retry", headers=AUTH)).status == 403
        retried = await client.post(f"/api/destinations/{hooks[0].id}/retry", headers=ADMIN)
        assert retried.status == 202
        body = await retried.json()
        assert body["destination"] == hooks[0].id and body["requeued"] == 2 and len(body["deliveries"]) == 2
        assert await redis.hlen(keys.push_failed()) == 1
        env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
        done = run_cli("retry", "--destination", hooks[1].id, env=env)
        assert done.returncode == 0, done.stderr
        assert "1 failed deliveries" in done.stdout and await redis.hlen(keys.push_failed()) == 0
        assert run_cli("retry", env=env).returncode != 0  # a delivery id or a destination
    finally:
        await redis.aclose()


async def test_long_lists_are_paged(aiohttp_client, settings, redis_url, seed_v1):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, run_workers=False)))
    redis = await connect(redis_url)
    try:
        store = PartnerStore(redis, FEEDS)
        for n in range(55):
            await store.create(f"p{n:02d}", ["latest"], ["atom"])
    finally:
        await redis.aclose()
    for n in range(3):
        doc = {**seed_v1, "uri": f"{seed_v1['uri']}-{n}"}
        await publish(client, doc)
        await publish(client, {**doc, "versionCreated": "2030-01-01T00:00:00Z",
                               "headlines": [{"role": "main", "value": f"Fix {n}"}]}, "?signal=correction")
    first = await flow(client, "?limit=2")
    second = await flow(client, "?limit=2&offset=2")
    assert len(first["items"]) == 2 and len(second["items"]) == 1 and first["totalItems"] == 3
    assert first["items"][0]["required"] == 55 and len(first["items"][0]["partners"]) == 55
    assert first["outstanding"] == 3 * 55 and first["outstandingItems"] == 3
    assert (await client.get("/api/propagation?limit=0", headers=ADMIN)).status == 400
    assert (await client.get("/api/propagation?offset=x", headers=ADMIN)).status == 400

    await client.post("/ops/login", data={"token": ADMIN["Authorization"][7:]})
    page = await (await client.get("/ops")).text()
    assert page.count('<tr data-partner="') == 50 and "?partners=1#partners" in page
    assert "and 43 more" in page  # 12 chips per correction, the counts cover all 55
    rest = await (await client.get("/ops?partners=1")).text()
    assert rest.count('<tr data-partner="') == 5 and "?partners=0#partners" in rest


# ----- item 6: a partner's own status -------------------------------------------------------------------

async def test_my_status_shows_what_i_missed_and_nobody_elses(client, seed_v1, seed_v2, redis_url):
    mine = await partner(client, "mine", feeds=["latest"], formats=["atom", "json"])
    theirs = await partner(client, "theirs", feeds=["latest"], formats=["atom"])
    await publish(client, seed_v1)
    other = {**seed_v1, "uri": seed_v1["uri"] + "-other"}
    await publish(client, other)
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": mine})).status == 200
    await publish(client, seed_v2, "?signal=correction")
    await publish(client, {**other, "versionCreated": "2030-01-01T00:00:00Z",
                           "headlines": [{"role": "main", "value": "Theirs, corrected"}]}, "?signal=correction")
    article = article_id_for_uri(seed_v1["uri"])
    # theirs catches up on both; mine on neither
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": theirs})).status == 200

    response = await client.get("/api/me/status", headers={"Authorization": f"Bearer {mine}"})
    assert response.status == 200 and "RateLimit" in response.headers
    body = await response.json()
    assert body["partner"] == "mine" and body["outstanding"] == 2 and body["page"]["total"] == 2
    missed = {m["id"]: m for m in body["missed"]}
    assert missed[article]["version"] == 2 and missed[article]["delivery"] == "content"
    assert missed[article]["links"]["item"].endswith(f"/items/{article}")
    assert missed[article]["links"]["newsml"].endswith(f"/items/{article}/newsml")
    times = [m["outstandingSince"] for m in body["missed"]]
    assert times == sorted(times)  # oldest first
    assert body["lastPoll"] is not None and body["polls"][0]["channel"] == "latest" and body["pushes"] == []
    assert "theirs" not in orjson.dumps(body).decode()

    theirs_view = await (await client.get("/api/me/status", headers={"X-API-Key": theirs})).json()
    assert theirs_view["partner"] == "theirs" and theirs_view["outstanding"] == 0 and theirs_view["missed"] == []

    assert (await client.get("/api/me/status")).status == 401
    assert (await client.get("/api/me/status", headers={"X-API-Key": "syn_nope"})).status == 401
    assert (await client.get("/api/me/status", headers=ADMIN)).status == 403
    assert (await client.get("/api/me/status?limit=0", headers={"X-API-Key": mine})).status == 400
    page = await (await client.get("/api/me/status?limit=1", headers={"X-API-Key": mine})).json()
    assert len(page["missed"]) == 1 and page["outstanding"] == 2

    link = missed[article]["links"]["item"].split("/items/")[1]
    assert (await client.get(f"/items/{link}", headers={"X-API-Key": mine})).status == 200
    after = await (await client.get("/api/me/status", headers={"X-API-Key": mine})).json()
    assert after["outstanding"] == 1 and article not in {m["id"] for m in after["missed"]}


async def test_a_receipt_ends_outstanding_only_at_the_required_version(redis_url, sync_redis):
    """The receipt step and the requirement agree on the keys (a hash of whole numbers, a sorted set of
    article ids): a receipt below the required version leaves the article outstanding."""
    from server.partners.ledger import PollLedger

    sync_redis.hset(keys.partner_required("p"), "a1", 3)
    sync_redis.zadd(keys.partner_outstanding("p"), {"a1": 1})
    sync_redis.sadd(keys.propagation_article_items("a1"), 3)  # a1 has a correction in the window
    sync_redis.hset(keys.partner_required("p"), "u1", 2)  # u1 only an update: nothing to settle
    redis = await connect(redis_url)
    try:
        ledger = PollLedger(redis)
        ledger.record("p", None, "latest", "atom", 200, 10, "r1", (("a1", 2),))
        await ledger.flush()
        assert sync_redis.zscore(keys.partner_outstanding("p"), "a1") == 1
        ledger.record("p", None, "latest", "atom", 200, 10, "r2", (("a1", 3), ("u1", 2)))
        await ledger.flush()
        assert sync_redis.zcard(keys.partner_outstanding("p")) == 0
    finally:
        await redis.aclose()
    assert keys.PARTNER_RECEIVED_PARTS[0] + "p" + keys.PARTNER_RECEIVED_PARTS[1] == keys.partner_received("p")
    # The settling's Lua builds these names from their parts: they must stay the key functions' own.
    items, pending = keys.PROPAGATION_ARTICLE_ITEMS_PARTS, keys.PROPAGATION_PENDING_PARTS
    assert items[0] + "a1" + items[1] == keys.propagation_article_items("a1")
    assert pending[0] + "a1:3" + pending[1] == keys.propagation_pending("a1", 3)
    assert pending[0] + "a1:3" == keys.propagation_item("a1", 3)  # the window's Lua derives one from the other
    index = keys.PARTNER_PENDING_ITEMS_PARTS
    assert index[0] + "p" + index[1] + "kill" == keys.partner_pending_items("p", "kill")
    for parts, key in ((keys.PARTNER_REQUIRED_PARTS, keys.partner_required), (keys.PARTNER_OUTSTANDING_PARTS,
                                                                             keys.partner_outstanding)):
        assert parts[0] + "p" + parts[1] == key("p")
    assert sync_redis.smembers(keys.propagation_receipts_to_settle()) == {keys.partner_received("p") + "|a1"}


async def test_the_trim_drops_only_requirements_of_articles_gone_quiet(redis_url, sync_redis):
    """Requirements of articles unchanged for the window go (incrementally: each trim looks only at
    the articles that went quiet since the previous one); those of articles changed since stay."""
    from datetime import UTC, datetime, timedelta

    from server.partners.propagation import Requirements

    now = datetime(2030, 1, 10, tzinfo=UTC)
    micros = {"old": now - timedelta(days=9), "later": now - timedelta(days=6), "fresh": now - timedelta(hours=1)}
    sync_redis.zadd(keys.articles_by_change(), {a: int(t.timestamp() * 1_000_000) for a, t in micros.items()})
    for name in ("p", "q"):
        sync_redis.hset(keys.partner_required(name), mapping=dict.fromkeys(micros, 2))
        sync_redis.zadd(keys.partner_outstanding(name), dict.fromkeys(micros, 1))
    items_at = {"old|2": micros["old"], "fresh|2": micros["fresh"]}  # a kill out of the window, one in it
    sync_redis.zadd(keys.propagation_items(), {m: int(t.timestamp() * 1000) for m, t in items_at.items()})
    sync_redis.zadd(keys.partner_pending_items("p", "kill"), {m: int(t.timestamp() * 1000) for m, t in items_at.items()})
    redis = await connect(redis_url)
    try:
        requirements = Requirements(redis)
        assert await requirements.trim(["p", "q"], timedelta(days=7), now) == 3  # the old item, 2 requirements
        assert sorted(sync_redis.hkeys(keys.partner_required("p"))) == ["fresh", "later"]
        assert sorted(sync_redis.zrange(keys.partner_outstanding("q"), 0, -1)) == ["fresh", "later"]
        assert sync_redis.zrange(keys.partner_pending_items("p", "kill"), 0, -1) == ["fresh|2"]  # went with its item
        assert sync_redis.zrange(keys.propagation_items(), 0, -1) == ["fresh|2"]
        assert await requirements.trim(["p", "q"], timedelta(days=7), now) == 0  # nothing went quiet since
        assert await requirements.trim(["p", "q"], timedelta(days=7), now + timedelta(days=2)) == 2
        assert sync_redis.hkeys(keys.partner_required("q")) == ["fresh"]
    finally:
        await redis.aclose()


async def test_last_polls_and_pushes_are_reconciled_with_the_last_used_keys(redis_url, sync_redis):
    """After an upgrade from a version that kept only each partner's last-used hash (or beside a process
    of it), the maintenance fills the sorted sets the ops views read; a newer time a flush wrote
    meanwhile stays (GT)."""
    from server.partners.ledger import LAST_PUSH, PollLedger

    sync_redis.hset(keys.partner_last_used("p"), mapping={"k1": "2030-01-01T10:00:00Z", "k2": "2030-01-01T12:00:00Z",
                                                          LAST_PUSH: "2030-01-01T11:00:00Z"})
    sync_redis.hset(keys.partner_last_used("q"), mapping={"k3": "2030-01-01T09:00:00Z"})
    later = int(datetime(2030, 1, 2, tzinfo=UTC).timestamp() * 1000)
    sync_redis.zadd(keys.partners_last_poll(), {"q": later})  # flushed by the new version already
    redis = await connect(redis_url)
    try:
        ledger = PollLedger(redis)
        await ledger.reconcile_last_seen(["p", "q", "never"])
        seen = await ledger.last_seen(["p", "q", "never"])
    finally:
        await redis.aclose()
    assert seen["p"] == (datetime(2030, 1, 1, 12, tzinfo=UTC), datetime(2030, 1, 1, 11, tzinfo=UTC))
    assert seen["q"] == (datetime(2030, 1, 2, tzinfo=UTC), None)
    assert seen["never"] == (None, None)
