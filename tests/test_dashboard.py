"""The ops dashboard at /ops: login, the signed session cookie, CSRF, the retry button, escaping, and a
real headless Chromium (Debian's, driven by Playwright) watching the seed correction go from
outstanding to received."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from conftest import ADMIN, ADMIN_TOKEN, AUTH, ROOT, make_partner, room_in_rate_window
from yarl import URL

from server.core import keys
from server.core.redis_connection import connect
from server.domain.articles import article_id_for_uri
from server.http.app import create_app
from server.http.dashboard import COOKIE, FLASH_COOKIE, SESSION_LIFETIME, Dashboard, session_secret
from server.push.destinations import DestinationStore, new_webhook
from server.push.payloads import delivery_id
from server.push.queue import Claim, PushQueue

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
OUTPUT = ROOT / "test-output"
CHROMIUM = os.environ.get("SYNDICATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def publish(client, doc, query=""):
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def login(client) -> str:
    """Log in with the admin token; returns the CSRF token of the dashboard page."""
    response = await client.post("/ops/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/ops"
    page = await client.get("/ops", allow_redirects=False)
    assert page.status == 200, await page.text()
    return CSRF.search(await page.text()).group(1)


def with_cookie(client, value: str) -> None:
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({COOKIE: value}, URL(str(client.make_url("/ops"))))


async def test_ops_needs_a_login_and_pages_are_locked_down(client):
    response = await client.get("/ops", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/ops/login"
    page = await client.get("/ops/login")
    assert page.status == 200 and page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "form-action 'self'" in csp
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script" not in await page.text()
    # The ops API still wants its bearer token: a dashboard session is not an API credential.
    await login(client)
    assert (await client.get("/api/status")).status == 401


async def test_login_sets_a_locked_down_cookie_and_wrong_tokens_are_throttled(client, aiohttp_client, settings):
    response = await client.post("/ops/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert response.status == 303
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"] == "SameSite=Strict" and flags["path"] == "Path=/ops"
    assert "secure" not in flags  # plain-http base URL
    assert ADMIN_TOKEN not in cookie

    # A publisher token is not the admin token.
    third = await aiohttp_client(create_app(settings))
    publisher = await third.post("/ops/login", data={"token": AUTH["Authorization"].split()[1]},
                                 allow_redirects=False)
    assert publisher.status == 401

    secure = await aiohttp_client(create_app(dataclasses.replace(settings,
                                                                 base_url_setting="https://feeds.example.com")))
    https_cookie = (await secure.post("/ops/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
                    ).headers["Set-Cookie"]
    assert "Secure" in https_cookie and "HttpOnly" in https_cookie

    await room_in_rate_window()  # the failures are counted in one-minute windows
    other = await aiohttp_client(create_app(settings))
    statuses = []
    for n in range(settings.failed_tokens_per_address + 2):
        wrong = await other.post("/ops/login", data={"token": f"guess-{n}-0123456789abcdef"}, allow_redirects=False)
        statuses.append(wrong.status)
        assert "Set-Cookie" not in wrong.headers
        if n == 0:
            assert "not the admin token" in await wrong.text()
    assert statuses == [401] * settings.failed_tokens_per_address + [429, 429]
    # Throttled (the failed-key throttle's rule for tokens, shared by every process): even the right
    # token waits, so guessing gains nothing.
    right = await other.post("/ops/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert right.status == 429 and int(right.headers["Retry-After"]) > 0


async def test_forged_expired_and_logged_out_cookies_are_refused(client, settings):
    secret = session_secret(settings.admin_token, None)
    real = Dashboard(secret, False, set())
    _session, good = real.new_session()
    session_id, expires, signature = good.split(".")
    forged = [
        Dashboard(b"x" * 32, False, set()).new_session()[1],  # someone else's key
        f"{session_id}.{int(expires) + 3600}.{signature}",  # expiry stretched
        f"{session_id}x.{expires}.{signature}",
        f"{session_id}.{expires}.",
        "garbage",
        real.new_session(now=time.time() - SESSION_LIFETIME.total_seconds() - 1)[1],  # expired
    ]
    for value in forged:
        with_cookie(client, value)
        response = await client.get("/ops", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/ops/login", value

    with_cookie(client, good)
    page = await client.get("/ops", allow_redirects=False)
    assert page.status == 200
    csrf = CSRF.search(await page.text()).group(1)
    out = await client.post("/ops/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/ops/login"
    with_cookie(client, good)  # a copy of the cookie kept from before the logout
    assert (await client.get("/ops", allow_redirects=False)).status == 303


async def test_posts_need_the_csrf_token_and_our_origin(client):
    csrf = await login(client)
    assert (await client.post("/ops/logout", allow_redirects=False)).status == 403
    assert (await client.post("/ops/logout", data={"csrf": "x" * 43}, allow_redirects=False)).status == 403
    retry = await client.post(f"/ops/deliveries/{'0' * 32}/retry", allow_redirects=False)
    assert retry.status == 403 and "security token" in await retry.text()
    foreign = await client.post("/ops/logout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"},
                                allow_redirects=False)
    assert foreign.status == 403
    null_origin = await client.post("/ops/logout", data={"csrf": csrf}, headers={"Origin": "null"},
                                    allow_redirects=False)
    assert null_origin.status == 403
    assert (await client.get("/ops", allow_redirects=False)).status == 200  # still logged in
    ours = str(client.make_url("")).rstrip("/")
    out = await client.post("/ops/logout", data={"csrf": csrf}, headers={"Origin": ours}, allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/ops", allow_redirects=False)).status == 303


async def test_a_signature_beyond_ascii_is_refused_not_a_500(client):
    """A CSRF token, session cookie or flash cookie holding a character beyond ASCII is a wrong
    signature like any other (403, or the way to the sign-in page), never a 500 (hmac.compare_digest
    refuses such a str; found by the schemathesis run)."""
    csrf = await login(client)
    for forged in ("\u00e9" * len(csrf), csrf[:-1] + "\u00df"):
        response = await client.post("/ops/logout", data={"csrf": forged}, allow_redirects=False)
        assert response.status == 403, await response.text()
        response = await client.post(f"/ops/deliveries/{'0' * 32}/retry", data={"csrf": forged},
                                     allow_redirects=False)
        assert response.status == 403, await response.text()
    session = client.session.cookie_jar.filter_cookies(URL(str(client.make_url("/ops"))))[COOKIE].value
    session_id, expires, signature = session.split(".")
    forged_session = f"{session_id}.{expires}.{signature[:-1]}\u00e9".encode().decode("latin-1")
    forged_flash = "b2sKaGk.\u00e9\u00e9".encode().decode("latin-1")
    # (sent with a session of their own, past the cookie jar's checks)
    # ...and bytes that are not UTF-8 at all (a lone 0xE9: the server reads it as a lone surrogate)
    for cookie, status in ((f"{COOKIE}={forged_session}", 303), (f"{FLASH_COOKIE}={forged_flash}; {COOKIE}={session}", 200),
                           (f"{COOKIE}=a.\xe9.c", 303), (f"{FLASH_COOKIE}=\xe9\xe9.\xe9; {COOKIE}={session}", 200)):
        async with aiohttp.ClientSession() as raw, \
                raw.get(client.make_url("/ops"), headers={"Cookie": cookie}, allow_redirects=False) as page:
            assert page.status == status, await page.text()


async def test_a_form_that_is_not_text_is_a_400(client):
    """A form in a charset that is not a text encoding (Python's ``unicode_escape`` makes lone surrogates
    of ``\\ud800``), or holding a lone surrogate, is refused as unreadable, on every form route."""
    csrf = await login(client)
    escaped = {"Content-Type": "application/x-www-form-urlencoded; charset=unicode_escape"}
    for path, body in (("/ops/login", b"token=%5Cud800"), ("/ops/logout", b"csrf=%5Cud800"),
                       (f"/ops/deliveries/{'0' * 32}/retry", b"csrf=%5Cud800"),
                       ("/hub", b"hub.mode=subscribe&hub.secret=%5Cud800abc&hub.callback=http://a.example/"
                                b"&hub.topic=http://x/feeds/latest/atom")):
        response = await client.post(path, data=body, headers=escaped, allow_redirects=False)
        assert response.status == 400, (path, response.status, await response.text())
    assert csrf


async def test_retry_button_requeues_a_failed_delivery(aiohttp_client, settings, redis_url, seed_v1, seed_v2):
    # No workers in this app: the retried delivery stays queued for the test to see.
    client = await aiohttp_client(create_app(dataclasses.replace(settings, run_workers=False)))
    hostile = {**seed_v2, "headlines": [{"role": "main", "value": "<script>alert(1)</script> & <b>bold</b>"}]}
    await publish(client, seed_v1)
    await publish(client, hostile, "?signal=correction")
    await make_partner(redis_url, "acme", feeds=["latest"], formats=["atom"])
    article = article_id_for_uri(seed_v1["uri"])
    redis = await connect(redis_url)
    try:
        hook = await DestinationStore(redis).save(new_webhook("acme", "https://hooks.acme.example/in", "ninjs",
                                                              "s" * 32))
        delivery = delivery_id(hook.id, article, 2)
        queue = PushQueue(redis)
        await queue.enqueue([hook.id], article, 2)
        await queue.give_up(Claim(hook.id, article), version=2, failure={
            "delivery": delivery, "kind": "webhook", "destination": hook.id, "partner": "acme", "url": hook.url,
            "article": article, "version": 2, "attempts": 7, "firstAttemptAt": "2026-01-01T00:00:00Z",
            "lastAttemptAt": "2026-01-01T01:00:00Z", "lastStatus": 400, "lastError": "<i>bad request</i>"})
        assert await redis.hlen(keys.push_failed()) == 1

        csrf = await login(client)
        page = await (await client.get("/ops")).text()
        # Failed deliveries are grouped by destination, with one "Retry all" each (issue 11); the single
        # delivery's retry stays as a route.
        assert f'action="/ops/destinations/{hook.id}/retry"' in page and "Retry all" in page
        assert f'data-destination="{hook.id}" data-count="1"' in page
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in page
        assert "<i>bad request</i>" not in page and "&lt;i&gt;bad request&lt;/i&gt;" in page
        assert 'data-partner="acme" data-state="outstanding"' in page

        response = await client.post(f"/ops/deliveries/{delivery}/retry", data={"csrf": csrf},
                                     allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/ops#failed"
        assert "HttpOnly" in response.headers["Set-Cookie"] and "SameSite=Strict" in response.headers["Set-Cookie"]
        assert await redis.hlen(keys.push_failed()) == 0
        assert [c for c, _since in await queue.waiting()] == [Claim(hook.id, article)]
        after = await (await client.get("/ops")).text()
        assert "queued again" in after and 'id="flash"' in after
        assert "queued again" not in await (await client.get("/ops")).text()  # a flash shows once

        again = await client.post(f"/ops/deliveries/{delivery}/retry", data={"csrf": csrf})
        assert again.status == 200 and "No failed delivery" in await again.text()
    finally:
        await redis.aclose()


async def test_chart_counts_polls_per_hour(partner_client, seed_v1):
    await publish(partner_client, seed_v1)
    for _ in range(3):
        assert (await partner_client.get("/feeds/latest/atom")).status == 200
    await login(partner_client)
    page = await (await partner_client.get("/ops")).text()
    assert "polls 3 · pushes 0" in page
    assert re.search(r'<rect class="polls"[^>]*><title>\d\d:00: 3 polls</title>', page)


# --- a real browser ----------------------------------------------------------------------------------


def _browser_or_skip():
    """Playwright's async API, or skip (fail when SYNDICATE_REQUIRE_BROWSER is set, as `make test` does)."""
    problems = []
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None
        problems.append("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        problems.append(f"no Chromium at {CHROMIUM} (scripts/ensure-system.sh browser installs Debian's)")
    if problems:
        message = "browser test needs " + " and ".join(problems)
        if os.environ.get("SYNDICATE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return async_playwright


async def test_browser_sees_the_seed_correction_go_from_outstanding_to_received(settings, seed_v1, seed_v2,
                                                                                  tmp_path):
    async_playwright = _browser_or_skip()
    runner = aiohttp.web.AppRunner(create_app(settings))
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    article = article_id_for_uri(seed_v1["uri"])
    OUTPUT.mkdir(exist_ok=True)
    try:
        async with aiohttp.ClientSession(base) as http:
            async def post(path, body, headers):
                async with http.post(path, data=orjson.dumps(body), headers=headers) as response:
                    assert response.status in (200, 201), await response.text()
                    return await response.json()

            async def poll(key):
                async with http.get("/feeds/latest/atom", headers={"X-API-Key": key}) as response:
                    assert response.status == 200
                    await response.read()

            await post("/api/articles", seed_v1, JSON_HEADERS)
            key = (await post("/api/partners", {"name": "partner-a", "feeds": ["latest"], "formats": ["atom"]},
                              ADMIN_JSON))["key"]
            await poll(key)
            await post("/api/articles?signal=correction", seed_v2, JSON_HEADERS)

            async with async_playwright() as playwright:
                context = await playwright.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1360, "height": 1000})
                try:
                    page = context.pages[0] if context.pages else await context.new_page()
                    errors = []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))

                    await page.goto(f"{base}/ops")
                    assert page.url == f"{base}/ops/login"
                    await page.fill("#token", "wrong-token-0123456789abcdef")
                    await page.click("button[type=submit]")
                    assert "not the admin token" in await page.inner_text("#login-error")
                    await page.fill("#token", ADMIN_TOKEN)
                    await page.click("button[type=submit]")
                    await page.wait_for_url(f"{base}/ops")
                    cookies = {c["name"]: c for c in await context.cookies()}
                    assert cookies[COOKIE]["httpOnly"] and cookies[COOKIE]["sameSite"] == "Strict"

                    chip = page.locator(f'tr[data-article="{article}"] [data-partner="partner-a"]')
                    assert await chip.get_attribute("data-state") == "outstanding"
                    assert "outstanding for" in await chip.inner_text()
                    assert "1 correction/kill delivery outstanding" in await page.inner_text("#summary")
                    outstanding_shot = OUTPUT / "dashboard-outstanding.png"
                    await page.screenshot(path=str(outstanding_shot), full_page=True)

                    await poll(key)  # the partner polls again and gets v2
                    await page.reload()
                    assert await chip.get_attribute("data-state") == "received"
                    assert "received" in await chip.inner_text()
                    assert "Every correction and kill has reached" in await page.inner_text("#summary")
                    row = page.locator('#partners tr[data-partner="partner-a"]')
                    assert await row.get_attribute("data-state") == "healthy"
                    shot = OUTPUT / "dashboard.png"
                    await page.screenshot(path=str(shot), full_page=True)
                    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

                    await page.click("text=Sign out")
                    await page.wait_for_url(f"{base}/ops/login")
                    # Nothing refused by the Content-Security-Policy, no script errors, no missing asset
                    # (the one expected failure is the wrong token's 401).
                    assert [e for e in errors if "401" not in e] == [], errors
                finally:
                    await context.close()
        for path in (outstanding_shot, shot, tmp_path / "dashboard.png"):
            assert path.exists() and path.stat().st_size > 10_000
    finally:
        await runner.cleanup()
