"""Push receipts and delivery guarantees (issue 11, items 2 to 4), against the tests' own Redis and real
HTTP receivers (:class:`push_helpers.Subscriber`):

- an acknowledged push is *received* (``syn:partner:<name>:received``, and no longer outstanding) in
  the same script call that ends the delivery, with no ledger flush (a SIGKILL after the ack cannot lose
  it);
- a revision acknowledged with 2xx is never queued or sent again to that destination; a newer one
  supersedes an older one still waiting;
- a payload that cannot be rendered is given up at once, with the reason, and only a retry by hand
  sends it again;
- a verified WebSub subscription whose save fails is saved on a retry, or denied.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import orjson
import pytest
import redis.asyncio as redis_async
from conftest import ADMIN, ALLOW_LOOPBACK, free_port
from push_helpers import ATOM, Behaviour, Subscriber, atom_entries, entry_version, stays_false, wait_for
from redis.exceptions import ConnectionError as RedisConnectionError
from test_push import (
    SECRET,
    add_endpoint,
    create_partner,
    delivery_versions,
    fanned_out,
    publish,
    subscribe_verified,
    topic_url,
)

from server.core import keys
from server.domain.articles import article_id_for_uri
from server.http.app import create_app
from server.http.state import DESTINATIONS, PUSH_QUEUE
from server.partners.receipts import ReceiptWriter, decode
from server.partners.receipts import read as read_receipts
from server.push.destinations import WEBSUB, Destination, DestinationStore, new_webhook, subscription_id
from server.push.websub import HubMode, SaveRetry, verify_intent


@pytest.fixture
async def async_redis(redis_url):
    client = redis_async.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def revision(seed: dict, n: int) -> dict:
    """Revision ``n`` of the seed story, with its own headline (so it is a new revision, not a retry)."""
    return {**seed, "version": str(n), "headlines": [{"role": "main", "value": f"Revision {n} of the story"}]}


def entry_ids(receiver: Subscriber) -> list[tuple[str, int]]:
    """(entry id, version) of each Atom POST, in arrival order."""
    return [(e.findtext(f"{ATOM}id"), entry_version(e)) for e in (atom_entries(p.body)[0] for p in receiver.posts)]


# ----- receipts: one rule, in Redis, with the acknowledgement ----------------------------------------

async def test_the_receipt_rule_keeps_the_highest_version_its_first_arrival_and_settles_what_was_owed(
        async_redis, sync_redis):
    writer = ReceiptWriter(async_redis)
    sync_redis.hset(keys.partner_required("acme"), mapping={"a": 2, "b": 5})
    sync_redis.zadd(keys.partner_outstanding("acme"), {"a": 100, "b": 100, "c": 100})

    await writer.write("acme", [("a", 1, 1_000), ("b", 4, 1_000), ("c", 9, 1_000)])
    # a: v1 does not satisfy "v2 required"; b: v4 not v5; c: nothing required, so nothing settled here.
    assert sorted(sync_redis.zrange(keys.partner_outstanding("acme"), 0, -1)) == ["a", "b", "c"]

    await writer.write("acme", [("a", 3, 2_000), ("b", 2, 2_000)])
    assert sorted(sync_redis.zrange(keys.partner_outstanding("acme"), 0, -1)) == ["b", "c"]  # a: v3 >= v2
    await writer.write("acme", [("a", 3, 3_000), ("a", 2, 4_000)])  # the same or older: nothing changes
    stored = sync_redis.hgetall(keys.partner_received("acme"))
    assert {a: decode(v) for a, v in stored.items()} == {"a": (3, 2_000), "b": (4, 1_000), "c": (9, 1_000)}

    # A requirement already met by what was received before (b at v4, required v4 now): settled by any receipt.
    sync_redis.hset(keys.partner_required("acme"), "b", 4)
    await writer.write("acme", [("b", 1, 5_000)])
    assert sync_redis.zrange(keys.partner_outstanding("acme"), 0, -1) == ["c"]
    received = await read_receipts(async_redis, "acme")
    assert received["a"] == (3, datetime.fromtimestamp(2, tz=UTC))
    await writer.write("acme", [])  # nothing to write: no call


async def test_an_acknowledged_push_is_received_in_the_step_that_ends_it_without_any_ledger_flush(
        aiohttp_client, push_settings, sync_redis, receivers, seed_v1):
    # A flush interval of an hour: the ledger's buffer is never written during the test, which is what a
    # SIGKILL between the acknowledgement and the next flush would leave behind.
    client = await aiohttp_client(create_app(dataclasses.replace(push_settings, flush_interval_seconds=3600)))
    await create_partner(client, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers()
    endpoint = await add_endpoint(client, "acme", receiver.url(), "ninjs")
    article_id = article_id_for_uri(seed_v1["uri"])
    # The requirement side (written elsewhere): acme must receive v1, outstanding since long ago.
    sync_redis.hset(keys.partner_required("acme"), mapping={article_id: 1, "another-article": 1})
    sync_redis.zadd(keys.partner_outstanding("acme"), {article_id: 1, "another-article": 1})

    await publish(client, seed_v1)
    await wait_for(lambda: receiver.delivered, message="v1 acknowledged")
    await wait_for(lambda: fanned_out(sync_redis), message="the delivery to end")

    version, at_ms = decode(sync_redis.hget(keys.partner_received("acme"), article_id))
    assert version == 1 and abs(at_ms / 1000 - receiver.delivered[0].wall) < 5
    assert sync_redis.zrange(keys.partner_outstanding("acme"), 0, -1) == ["another-article"]
    assert sync_redis.hget(keys.push_acked(endpoint["id"]), article_id) == "1"
    assert sync_redis.xlen(keys.poll_ledger("acme")) == 0  # no flush ran: the receipt did not wait for one

    # The push's ledger line is still buffered (the partner's lastPush): the status flushes it.
    status = await (await client.get("/api/partners/acme/status", headers=ADMIN)).json()
    assert status["lastPush"] is not None and status["lastPoll"] is None
    # Removing the endpoint forgets what it acknowledged.
    response = await client.delete(f"/api/partners/acme/endpoints/{endpoint['id']}", headers=ADMIN)
    assert response.status == 204
    assert sync_redis.exists(keys.push_acked(endpoint["id"])) == 0


async def test_a_public_subscribers_acknowledgement_writes_no_partner_receipt(push, push_settings, sync_redis,
                                                                             receivers, seed_v1):
    receiver = await receivers()
    topic = topic_url(push_settings, "/feeds/headlines/atom")
    await subscribe_verified(push, sync_redis, receiver, topic)
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.delivered, message="v1 acknowledged")
    await wait_for(lambda: fanned_out(sync_redis), message="the delivery to end")
    assert list(sync_redis.scan_iter(match="syn:partner:*:received")) == []


# ----- exactly once per revision and destination -------------------------------------------------------

async def test_a_healthy_endpoint_gets_each_revision_once_while_changes_queue_up_during_its_delivery(
        push, sync_redis, receivers, seed_v1):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(delay_first=0.5))  # v1's attempt is slow: changes queue up meanwhile
    endpoint = await add_endpoint(push, "acme", receiver.url(), "atom")
    article_id = article_id_for_uri(seed_v1["uri"])
    queue = push.server.app[PUSH_QUEUE]

    await publish(push, seed_v1)
    await wait_for(lambda: receiver.posts, message="v1 in flight")
    for n in range(2, 6):
        await publish(push, revision(seed_v1, n), "?signal=correction")
    await wait_for(lambda: 5 in delivery_versions(receiver, only_ok=True), message="v5 acknowledged")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert sync_redis.hget(keys.push_acked(endpoint["id"]), article_id) == "5"

    # A dispatcher that lags, or re-reads change-log entries after a crash, queues them again: an
    # acknowledged revision (or an older one) is not queued, so it is not sent.
    sent = len(receiver.posts)
    for n in range(1, 6):
        await queue.enqueue([endpoint["id"]], article_id, n)
    assert sync_redis.zscore(keys.push_due(), f"{endpoint['id']}|{article_id}") is None
    assert sync_redis.hlen(keys.push_latest(endpoint["id"])) == 0
    assert await stays_false(lambda: len(receiver.posts) > sent, 0.5)

    await publish(push, revision(seed_v1, 6), "?signal=correction")
    await wait_for(lambda: 6 in delivery_versions(receiver), message="v6 sent")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert await stays_false(lambda: delivery_versions(receiver).count(6) > 1, 0.5)

    versions = delivery_versions(receiver)
    assert versions[0] == 1 and versions[-1] == 6 and 5 in versions
    assert versions == sorted(set(versions))  # each revision at most once, never an older after a newer
    assert all(p.ok for p in receiver.posts)
    ids = [p.headers["X-Syndicate-Delivery"] for p in receiver.posts]
    assert len(ids) == len(set(ids))


async def test_a_revision_waiting_to_retry_is_superseded_by_a_newer_one_and_never_sent(push, sync_redis, receivers,
                                                                                      seed_v1):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    # v1 fails once and is to be retried in 10 minutes; v2 arrives meanwhile and goes at once, alone.
    receiver = await receivers(Behaviour(fail_status=503, fail_times=1, retry_after="600"))
    endpoint = await add_endpoint(push, "acme", receiver.url(), "atom")
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.posts, message="v1 attempted")
    member = f"{endpoint['id']}|{article_id_for_uri(seed_v1['uri'])}"
    await wait_for(lambda: (sync_redis.zscore(keys.push_due(), member) or 0) > 0, message="v1 waiting to retry")
    await publish(push, revision(seed_v1, 2), "?signal=correction")
    await wait_for(lambda: receiver.delivered, message="v2 delivered")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert await stays_false(lambda: len(receiver.posts) > 2, 0.5)
    assert delivery_versions(receiver) == [1, 2] and delivery_versions(receiver, only_ok=True) == [2]


async def test_a_revision_not_yet_attempted_is_superseded_by_a_newer_one_and_never_sent(
        aiohttp_client, push_settings, sync_redis, receivers, seed_v1):
    # One delivery at a time to the endpoint: article B waits behind a slow delivery of article A.
    client = await aiohttp_client(create_app(dataclasses.replace(push_settings, push_concurrency_per_destination=1)))
    await create_partner(client, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(delay_first=1.0))
    await add_endpoint(client, "acme", receiver.url(), "atom")
    story_b = {**seed_v1, "uri": f"{seed_v1['uri']}-b"}

    await publish(client, seed_v1)
    await wait_for(lambda: receiver.posts, message="article A in flight")
    await publish(client, story_b)
    await publish(client, revision(story_b, 2), "?signal=correction")
    await wait_for(lambda: len(receiver.delivered) == 2, message="both articles delivered")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert await stays_false(lambda: len(receiver.posts) > 2, 0.5)
    [(a_id, a_version), (b_id, b_version)] = entry_ids(receiver)
    assert a_id != b_id and a_version == 1 and b_version == 2  # B's v1 was never sent


# ----- a payload that cannot be rendered ----------------------------------------------------------------

async def test_a_payload_that_cannot_be_rendered_is_given_up_at_once_with_the_reason_and_retried_only_by_hand(
        push, sync_redis, receivers, seed_v1):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers()
    await publish(push, seed_v1)
    article_id = article_id_for_uri(seed_v1["uri"])
    # A destination whose body cannot be made (a format no renderer knows, say from an older release):
    # saved past the API's checks, and queued as the dispatcher would.
    poisoned = await push.server.app[DESTINATIONS].save(new_webhook("acme", receiver.url(), "bogus", SECRET))
    await push.server.app[PUSH_QUEUE].enqueue([poisoned.id], article_id, 1)
    member = f"{poisoned.id}|{article_id}"

    raw = await wait_for(lambda: sync_redis.hget(keys.push_failed(), member), message="the delivery given up")
    failure = orjson.loads(raw)
    assert failure["attempts"] == 1 and failure["lastStatus"] is None and failure["version"] == 1
    assert failure["lastError"].startswith("payload could not be rendered: KeyError")
    # Given up for good: nothing waits, nothing is due, nothing was sent.
    assert sync_redis.zscore(keys.push_due(), member) is None and sync_redis.zscore(keys.push_leased(), member) is None
    assert sync_redis.zscore(keys.push_waiting_since(), member) is None
    assert sync_redis.hlen(keys.push_latest(poisoned.id)) == 0
    assert receiver.posts == []
    [attempt] = [f for _id, f in sync_redis.xrange(keys.push_attempts()) if f["destination"] == poisoned.id]
    assert attempt["ok"] == "0" and attempt["status"] == "0" and attempt["error"] == failure["lastError"]

    # Ops see it, with the reason.
    report = await (await push.get("/api/deliveries?status=failed", headers=ADMIN)).json()
    [shown] = [f for f in report["failed"] if f["destination"] == poisoned.id]
    assert shown["lastError"] == failure["lastError"]

    # A retry by hand tries again (and, still unrenderable, it is given up again at once).
    sync_redis.delete(keys.push_attempts())
    response = await push.post(f"/api/deliveries/{failure['delivery']}/retry", headers=ADMIN)
    assert response.status == 202, await response.text()
    await wait_for(lambda: sync_redis.xlen(keys.push_attempts()) == 1, message="the retry's attempt")
    await wait_for(lambda: sync_redis.hget(keys.push_failed(), member), message="given up again")
    assert await stays_false(lambda: sync_redis.xlen(keys.push_attempts()) > 1, 0.5)
    assert receiver.posts == []


# ----- WebSub: a verified subscription is saved, or denied ----------------------------------------------

class FlakyDestinations(DestinationStore):
    """A destination store whose first ``failures`` saves fail as a Redis blip would."""

    def __init__(self, redis, failures: int) -> None:
        super().__init__(redis)
        self.failures = failures
        self.saves = 0

    async def save(self, destination: Destination) -> Destination:
        self.saves += 1
        if self.failures > 0:
            self.failures -= 1
            raise RedisConnectionError("Connection reset by peer (a blip, in the test)")
        return await super().save(destination)


def subscription_for(receiver: Subscriber, settings) -> Destination:
    topic = topic_url(settings, "/feeds/headlines/atom")
    return Destination(id=subscription_id(receiver.url(), topic), kind=WEBSUB, url=receiver.url(), format="atom",
                       secret=None, partner=None, feed="headlines", topic=topic)


QUICK_RETRY = SaveRetry(budget_seconds=0.6, first_delay=0.05, max_delay=0.2)


async def test_a_verified_subscription_whose_save_fails_is_saved_on_a_retry(async_redis, sync_redis, settings,
                                                                           receivers):
    receiver = await receivers()
    store = FlakyDestinations(async_redis, failures=2)
    subscription = subscription_for(receiver, settings)
    assert await verify_intent(store, HubMode.SUBSCRIBE, subscription, 3600, allow_networks=ALLOW_LOOPBACK,
                               timeout_seconds=5, save_retry=QUICK_RETRY)
    assert store.saves == 3
    saved = orjson.loads(sync_redis.get(keys.destination(subscription.id)))
    assert saved["url"] == receiver.url() and saved["expiresAt"] is not None
    assert sync_redis.sismember(keys.destination_ids(), subscription.id)
    assert receiver.verifications_of("denied") == []


async def test_a_verified_subscription_that_cannot_be_saved_is_denied(sync_redis, settings, receivers):
    receiver = await receivers()
    # Every call of this client fails: nothing listens on its port.
    dead = redis_async.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        subscription = subscription_for(receiver, settings)
        assert not await verify_intent(DestinationStore(dead), HubMode.SUBSCRIBE, subscription, 3600,
                                       allow_networks=ALLOW_LOOPBACK, timeout_seconds=5, save_retry=QUICK_RETRY)
    finally:
        await dead.aclose()
    [verification] = receiver.verifications_of("subscribe")
    [denial] = receiver.verifications_of("denied")
    assert denial.query["hub.topic"] == subscription.topic and denial.query["hub.reason"]
    assert denial.at > verification.at
    assert sync_redis.get(keys.destination(subscription.id)) is None


def test_the_save_retry_doubles_its_waits_within_its_budget():
    assert SaveRetry(budget_seconds=1.0, first_delay=0.1, max_delay=0.3).delays() == pytest.approx(
        [0.1, 0.2, 0.3, 0.3])
    assert SaveRetry(budget_seconds=0.05, first_delay=0.1).delays() == []  # one try only
    assert sum(SaveRetry().delays()) <= SaveRetry().budget_seconds
    assert SaveRetry(first_delay=0).delays() == []
