"""Behind a load balancer: the client's address is the one the balancer forwarded (``X-Forwarded-For``,
or ``Forwarded`` when configured), but only when the TCP peer is one of ``SYNDICATE_TRUSTED_PROXIES``;
the rightmost hop that is not a trusted proxy is the client. The rule (``server.core.forwarding``) is
tested as a table, then over real HTTP on every consumer: the failed-key throttle (on the route and the
fast path), the hub's per-address limit and the access line."""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging

import orjson
import pytest
from conftest import app_server, check_fast_path, make_partner, room_in_rate_window
from multidict import CIMultiDict

from server.core.forwarding import ForwardedHeader, TrustedProxies
from server.core.networks import parse_networks
from server.core.settings import Settings, SettingsError
from server.observability import logs

BALANCER = parse_networks("127.0.0.0/8,10.0.0.0/8", "SYNDICATE_TRUSTED_PROXIES")


def headers(**values: str | list[str]) -> CIMultiDict[str]:
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in values.items():
        for one in [value] if isinstance(value, str) else value:
            result.add(name.replace("_", "-"), one)
    return result


@pytest.mark.parametrize(("peer", "given", "expected"), [
    ("127.0.0.1", {}, "127.0.0.1"),  # a trusted peer that forwarded nothing
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7"}, "203.0.113.7"),
    ("127.0.0.1", {"X_Forwarded_For": "198.51.100.1, 203.0.113.7"}, "203.0.113.7"),  # the client wrote the left
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7, 10.1.2.3"}, "203.0.113.7"),  # through two trusted proxies
    ("127.0.0.1", {"X_Forwarded_For": ["198.51.100.1", "203.0.113.7,10.1.2.3"]}, "203.0.113.7"),  # two lines
    ("127.0.0.1", {"X_Forwarded_For": "10.9.9.9, 10.1.2.3"}, "10.9.9.9"),  # all trusted: the leftmost
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7:4711"}, "203.0.113.7"),
    ("127.0.0.1", {"X_Forwarded_For": "[2001:db8::1]:4711"}, "2001:db8::1"),
    ("127.0.0.1", {"X_Forwarded_For": "2001:DB8:0::1"}, "2001:db8::1"),
    ("127.0.0.1", {"X_Forwarded_For": "::ffff:203.0.113.7"}, "203.0.113.7"),
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7, junk"}, "127.0.0.1"),  # not an address: its proxy is the client
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7, unknown, 10.1.2.3"}, "10.1.2.3"),
    ("127.0.0.1", {"Forwarded": "for=203.0.113.7"}, "127.0.0.1"),  # not the configured header
    ("203.0.113.9", {"X_Forwarded_For": "198.51.100.1"}, "203.0.113.9"),  # an untrusted peer: header ignored
    ("::ffff:127.0.0.1", {"X_Forwarded_For": "203.0.113.7"}, "203.0.113.7"),
    (None, {"X_Forwarded_For": "203.0.113.7"}, "unknown"),
])
def test_the_rightmost_untrusted_hop_of_x_forwarded_for(peer, given, expected):
    assert TrustedProxies(BALANCER).client_address(peer, headers(**given)) == expected


@pytest.mark.parametrize(("given", "expected"), [
    ("for=203.0.113.7", "203.0.113.7"),
    ('for="[2001:db8::1]:4711";proto=https', "2001:db8::1"),
    ("for=198.51.100.1, for=203.0.113.7;by=10.0.0.1, for=10.1.2.3", "203.0.113.7"),
    ('for=203.0.113.7;host="a,b", for=10.1.2.3', "203.0.113.7"),  # a comma inside quotes
    ("for=_hidden", "127.0.0.1"),
    ("proto=https", "127.0.0.1"),  # an element without for=
])
def test_forwarded_for_when_that_is_the_header(given, expected):
    proxies = TrustedProxies(BALANCER, ForwardedHeader.FORWARDED)
    assert proxies.client_address("127.0.0.1", headers(Forwarded=given, X_Forwarded_For="198.51.100.99")) == expected


def test_no_trusted_proxies_by_default():
    settings = Settings.from_env({})
    assert settings.trusted_proxies.networks == ()
    assert settings.trusted_proxies.client_address("127.0.0.1", headers(X_Forwarded_For="203.0.113.7")) == "127.0.0.1"
    parsed = Settings.from_env({"SYNDICATE_TRUSTED_PROXIES": "10.0.0.0/8, ::1/128",
                                "SYNDICATE_FORWARDED_HEADER": "Forwarded"}).trusted_proxies
    assert [str(n) for n in parsed.networks] == ["10.0.0.0/8", "::1/128"]
    assert parsed.header is ForwardedHeader.FORWARDED
    with pytest.raises(SettingsError, match="SYNDICATE_TRUSTED_PROXIES"):
        Settings.from_env({"SYNDICATE_TRUSTED_PROXIES": "10.0.0.0/33"})
    with pytest.raises(SettingsError, match="SYNDICATE_FORWARDED_HEADER"):
        Settings.from_env({"SYNDICATE_FORWARDED_HEADER": "X-Real-IP"})


# ----- over real HTTP ------------------------------------------------------------------------------


@pytest.fixture
def proxied_settings(settings):
    """The test client connects from 127.0.0.1: here that is the balancer."""
    return dataclasses.replace(settings, trusted_proxies=TrustedProxies(parse_networks("127.0.0.0/8")))


FAILED_ATTEMPTS_PER_MINUTE = Settings.from_env({}).failed_keys_per_address
_wrong_keys = itertools.count()


async def fail_keys(client, forwarded_for: str | None, times: int) -> list[int]:
    """``times`` wrong keys, each naming another key id (so only the address's count is reached)."""
    statuses = []
    for _ in range(times):
        extra = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        wrong = f"syn_{next(_wrong_keys):08x}_" + "x" * 43
        response = await client.get("/feeds/latest/json", headers={"X-API-Key": wrong, **extra})
        await response.read()
        statuses.append(response.status)
    return statuses


async def test_the_failed_key_throttle_counts_the_forwarded_client(aiohttp_client, proxied_settings, redis_url):
    await room_in_rate_window()
    key = await make_partner(redis_url)
    client = await aiohttp_client(app_server(proxied_settings))
    statuses = await fail_keys(client, "198.51.100.1, 203.0.113.7", FAILED_ATTEMPTS_PER_MINUTE + 1)
    assert statuses[:FAILED_ATTEMPTS_PER_MINUTE] == [401] * FAILED_ATTEMPTS_PER_MINUTE
    assert statuses[-1] == 429
    # The same client writing another address to the left is still itself; another client is not it.
    assert await fail_keys(client, "192.0.2.1, 203.0.113.7", 1) == [429]
    assert await fail_keys(client, "203.0.113.8", 1) == [401]
    assert await fail_keys(client, None, 1) == [401]  # the balancer itself
    # A good key from another client behind the same balancer, polled on one kept-alive connection
    # (answered on the fast path from the second poll), is never refused for the throttled one.
    for _ in range(5):
        response = await client.get("/feeds/latest/json", headers={"X-API-Key": key, "X-Forwarded-For": "203.0.113.8"})
        assert response.status == 200
        await response.read()
    check_fast_path(client.server)


async def test_without_trusted_proxies_a_forwarded_header_is_ignored(aiohttp_client, settings):
    await room_in_rate_window()
    client = await aiohttp_client(app_server(settings))
    assert (await fail_keys(client, "203.0.113.7", FAILED_ATTEMPTS_PER_MINUTE))[-1] == 401
    assert await fail_keys(client, "203.0.113.8", 1) == [429]  # every "client" is 127.0.0.1


async def test_the_hub_limits_the_forwarded_client(aiohttp_client, proxied_settings):
    HUB_REQUESTS_PER_ADDRESS = proxied_settings.hub_requests_per_address  # noqa: N806

    client = await aiohttp_client(app_server(proxied_settings))

    async def hub(forwarded_for: str) -> int:
        response = await client.post("/hub", data=b"hub.mode=nonsense", headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": forwarded_for})
        await response.read()
        return response.status

    assert {await hub("203.0.113.7") for _ in range(HUB_REQUESTS_PER_ADDRESS)} == {400}
    assert await hub("203.0.113.7") == 429
    assert await hub("203.0.113.8") == 400


async def test_the_access_line_names_the_forwarded_client(aiohttp_client, proxied_settings, redis_url):
    key = await make_partner(redis_url)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    logs.configure(proxied_settings, stream=buffer)
    try:
        client = await aiohttp_client(app_server(proxied_settings))
        for number in range(3):  # the route, then the fast path on the kept-alive connection
            response = await client.get("/feeds/latest/json", headers={
                "X-API-Key": key, "X-Forwarded-For": "203.0.113.7", "X-Request-Id": f"through-lb-{number}"})
            assert response.status == 200
            await response.read()
        response = await client.get("/healthz", headers={"X-Request-Id": "direct"})
        await response.read()
        logs.ACCESS_LINES.flush()
        check_fast_path(client.server)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    access = {e["request_id"]: e for e in lines if e["logger"] == "syndicate.access"}
    assert [access[f"through-lb-{n}"]["client"] for n in range(3)] == ["203.0.113.7"] * 3
    assert access["direct"]["client"] == "127.0.0.1"
    assert client.server.runner.server.fast_path.metrics.http.fast_answers >= 1
