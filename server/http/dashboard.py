"""The ops dashboard at ``/ops``: server-rendered HTML (jinja2, autoescaped) over :mod:`server.ops`.

* **Login** with the admin token (``POST /ops/login``); success sets a signed session cookie
  ``syn_ops`` = ``<session id>.<expiry>.<HMAC>`` (HttpOnly, SameSite=Strict, Path=/ops, Secure when the
  public base URL is https). Nothing is stored on login, so every process accepts every session; the
  HMAC key is ``SYNDICATE_SESSION_SECRET`` or, by default, derived from the admin token (rotating the
  admin token ends every session). A wrong token is a failed token of the failed-key throttle
  (:mod:`server.partners.throttle`), shared by every way in that takes a token.
* **Logout** (``POST /ops/logout``) records the session id in Redis until its expiry, so a copied
  cookie stops working too.
* **CSRF**: every POST form carries ``csrf`` = HMAC of the session id, checked on POST; a POST whose
  ``Origin`` (when sent) is not this server is refused. With SameSite=Strict that is belt and braces.
* Every response: ``Cache-Control: no-store`` and a Content-Security-Policy with no script at all
  (the page refreshes itself with ``<meta http-equiv="refresh">``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from server.core import keys
from server.core.errors import NotFound, Problem
from server.core.values import parse_iso, utc_now, whole_number
from server.http.api.ops import DESTINATION_ID
from server.http.client_address import request_address
from server.http.forms import read_form
from server.http.middleware import add_get, add_route
from server.http.state import ACCESS, OPS, REDIS, SETTINGS
from server.ops import views as ops
from server.ops.models import Page, PartnerHealth

COOKIE = "syn_ops"
FLASH_COOKIE = "syn_ops_flash"
COOKIE_PATH = "/ops"
SESSION_LIFETIME = timedelta(hours=12)
REFRESH_SECONDS = 15
CHART_HOURS = 24
ITEMS_PER_PAGE = 20  # corrections and kills (outstanding first)
CHIPS_PER_ITEM = 12  # partners shown per correction or kill (not received first); the counts cover all
PARTNERS_PER_PAGE = 50  # failing, then behind, then healthy
GROUPS_PER_PAGE = 20  # failed destinations

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("ops_templates", jinja2.Environment)
DASHBOARD: web.AppKey[Dashboard] = web.AppKey("ops_dashboard")


ended_session_key = keys.ended_session


# --- sessions, CSRF, throttle ------------------------------------------------------------------------


def session_secret(admin_token: str | None, configured: str | None) -> bytes | None:
    """The HMAC key for cookies and CSRF tokens: the configured secret, or one derived from the admin
    token (so no extra configuration is needed and all processes agree). None: no admin, no login."""
    if configured:
        return hashlib.sha256(b"syndicate-ops-session-v1|" + configured.encode()).digest()
    if admin_token:
        return hmac.new(admin_token.encode(), b"syndicate-ops-session-v1", hashlib.sha256).digest()
    return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signature_matches(expected: str, presented: str) -> bool:
    """``presented`` is ``expected`` (one of our signatures), in constant time. Compared as bytes:
    ``hmac.compare_digest`` refuses two ``str`` with a character beyond ASCII (a TypeError, so a 500),
    and a cookie or form field may hold any character."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    expires: int  # epoch seconds


class Dashboard:
    def __init__(self, secret: bytes | None, secure_cookie: bool, allowed_origins: set[str]) -> None:
        self.secret = secret
        self.secure_cookie = secure_cookie
        self.allowed_origins = allowed_origins

    def _sign(self, purpose: str, value: str) -> str:
        assert self.secret is not None
        # A cookie may hold any character, lone surrogates included (bytes that are not UTF-8).
        return _b64(hmac.new(self.secret, f"{purpose}|{value}".encode("utf-8", "surrogatepass"),
                             hashlib.sha256).digest())

    def new_session(self, now: float | None = None) -> tuple[Session, str]:
        now = time.time() if now is None else now
        session = Session(secrets.token_urlsafe(18), int(now + SESSION_LIFETIME.total_seconds()))
        payload = f"{session.id}.{session.expires}"
        return session, f"{payload}.{self._sign('session', payload)}"

    def read_session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session the cookie stands for, if its signature is ours and it has not expired."""
        if self.secret is None or not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3:
            return None
        session_id, expires, signature = parts
        if not _signature_matches(self._sign("session", f"{session_id}.{expires}"), signature):
            return None
        expires_at = whole_number(expires)
        if expires_at is None:
            return None
        now = time.time() if now is None else now
        if expires_at <= now:
            return None
        return Session(session_id, expires_at)

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf", session.id)

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and _signature_matches(self.csrf_token(session), str(presented))

    def flash_cookie(self, kind: str, message: str) -> str:
        payload = _b64(f"{kind}\n{message}"[:500].encode())
        return f"{payload}.{self._sign('flash', payload)}"

    def read_flash(self, cookie: str | None) -> tuple[str, str] | None:
        if self.secret is None or not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not _signature_matches(self._sign("flash", payload), signature):
            return None
        try:
            kind, _, message = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode().partition("\n")
        except ValueError:
            return None
        return (kind if kind in ("ok", "error") else "error"), message


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _origin_ok(request: web.Request) -> bool:
    """A POST's Origin, when the browser sends one, must be this server: the public base URL, or the
    host the request was addressed to (a cross-site page cannot make the browser lie about Host)."""
    origin = request.headers.get("Origin")  # (pages send Referrer-Policy: same-origin; with no-referrer
    if origin is None:                       # Chromium would send "Origin: null" on our own forms)
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    origin = origin.strip().lower()
    allowed = set(request.app[DASHBOARD].allowed_origins)
    host = request.host.lower()
    allowed.update({f"http://{host}", f"https://{host}"})
    return origin in allowed


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def _redirect(location: str) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    _secure(response)
    return response


def _set_cookie(response: web.StreamResponse, dashboard: Dashboard, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="Strict",
                        secure=dashboard.secure_cookie)


def _clear_cookie(response: web.StreamResponse, dashboard: Dashboard, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=dashboard.secure_cookie)


def _render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status, app_key=TEMPLATES)
    _secure(response)
    return response


def _forbidden(request: web.Request, reason: str) -> web.Response:
    return _render(request, "ops_error.html", {"title": "Forbidden", "message": reason}, status=403)


async def _current_session(request: web.Request) -> Session | None:
    dashboard = request.app[DASHBOARD]
    session = dashboard.read_session(request.cookies.get(COOKIE))
    if session is None:
        return None
    if await request.app[REDIS].exists(ended_session_key(session.id)):
        return None
    return session


async def _checked_post(request: web.Request) -> tuple[Session | None, Any, web.Response | None]:
    """(session, form, refusal): a POST from a logged-in session, with our Origin and its CSRF token."""
    if not _origin_ok(request):
        return None, None, _forbidden(request, "This form was sent from another site.")
    session = await _current_session(request)
    if session is None:
        return None, None, _redirect("/ops/login")
    form = await read_form(request)
    if not request.app[DASHBOARD].csrf_ok(session, form.get("csrf")):
        return None, None, _forbidden(request, "The form's security token is missing or wrong. "
                                               "Reload the dashboard and try again.")
    return session, form, None


# --- handlers ----------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    if await _current_session(request) is not None:
        return _redirect("/ops")
    return _login_form(request)


def _login_form(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    enabled = request.app[DASHBOARD].secret is not None
    return _render(request, "ops_login.html", {"error": error, "enabled": enabled}, status=status)


async def login(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD]
    if not _origin_ok(request):
        return _forbidden(request, "This form was sent from another site.")
    form = await read_form(request)
    token = str(form.get("token") or "").strip()
    try:
        caller = request.app[ACCESS].check_token(token[:512], request_address(request), 'Bearer realm="syndicate"')
    except Problem as refused:
        if refused.status != 429:
            return _login_form(request, "That is not the admin token.", status=401)
        wait = refused.headers["Retry-After"]
        response = _login_form(request, f"Too many failed attempts. Try again in {wait} s.", status=429)
        response.headers["Retry-After"] = wait
        return response
    if dashboard.secret is None or not caller.is_admin:
        return _login_form(request, "That is not the admin token.", status=401)
    _session, cookie = dashboard.new_session()
    response = _redirect("/ops")
    _set_cookie(response, dashboard, COOKIE, cookie, int(SESSION_LIFETIME.total_seconds()))
    return response


async def logout(request: web.Request) -> web.Response:
    session, _form, refusal = await _checked_post(request)
    if refusal is not None:
        return refusal
    remaining = max(1, int(session.expires - time.time()))
    await request.app[REDIS].set(ended_session_key(session.id), "1", ex=remaining)
    response = _redirect("/ops/login")
    _clear_cookie(response, request.app[DASHBOARD], COOKIE)
    return response


async def retry_delivery(request: web.Request) -> web.Response:
    _session, _form, refusal = await _checked_post(request)
    if refusal is not None:
        return refusal
    dashboard = request.app[DASHBOARD]
    delivery = request.match_info["delivery_id"]
    if not (len(delivery) == 32 and all(c in "0123456789abcdef" for c in delivery)):
        kind, message = "error", "That is not a delivery id."
    else:
        try:
            result = await ops.retry(request.app[OPS], delivery)
            kind, message = "ok", (f"Delivery {delivery[:8]}… queued again: {result.article[:12]} "
                                   f"v{result.version} to {result.destination}.")
        except NotFound as exc:
            kind, message = "error", exc.detail
    response = _redirect("/ops#failed")
    _set_cookie(response, dashboard, FLASH_COOKIE, dashboard.flash_cookie(kind, message), 60)
    return response


def _page_number(request: web.Request, name: str) -> int:
    """``?<name>=N``: which page (from 0) of a long list to show; anything else is the first."""
    return min(whole_number(request.query.get(name)) or 0, 10_000)


async def retry_destination(request: web.Request) -> web.Response:
    _session, _form, refusal = await _checked_post(request)
    if refusal is not None:
        return refusal
    dashboard = request.app[DASHBOARD]
    destination = request.match_info["destination_id"]
    if not DESTINATION_ID.fullmatch(destination):
        kind, message = "error", "That is not a destination id."
    else:
        try:
            result = await ops.retry_destination(request.app[OPS], destination)
            kind, message = "ok", f"{len(result.requeued)} failed deliveries to {destination} queued again."
        except NotFound as exc:
            kind, message = "error", exc.detail
    response = _redirect("/ops#failed")
    _set_cookie(response, dashboard, FLASH_COOKIE, dashboard.flash_cookie(kind, message), 60)
    return response


async def dashboard_page(request: web.Request) -> web.Response:
    session = await _current_session(request)
    if session is None:
        return _redirect("/ops/login")
    dashboard = request.app[DASHBOARD]
    ctx = request.app[OPS]
    now = utc_now()
    item_page, partner_page, failed_page = (_page_number(request, name) for name in ("items", "partners", "failed"))
    propagation = await ops.propagation(ctx, now=now, offset=item_page * ITEMS_PER_PAGE, limit=ITEMS_PER_PAGE,
                                        partner_limit=CHIPS_PER_ITEM, outstanding_first=True)
    overview = await ops.overview(ctx, now=now)
    groups = await ops.failed_destinations(ctx)
    recent = await ops.deliveries(ctx, failed_only=True, limit=10)
    chart = activity_chart(await hourly_activity(ctx, now), now)
    flash = dashboard.read_flash(request.cookies.get(FLASH_COOKIE))
    order = {PartnerHealth.FAILING: 0, PartnerHealth.BEHIND: 1, PartnerHealth.HEALTHY: 2}
    partners = sorted(overview.partners, key=lambda r: (order[r.state], -r.outstanding, r.partner))
    context = {
        "now": now,
        "refresh": REFRESH_SECONDS,
        "csrf": dashboard.csrf_token(session),
        "flash": flash,
        "propagation": propagation,
        "items_page": Page(item_page * ITEMS_PER_PAGE, ITEMS_PER_PAGE, propagation.total_items),
        "overview": overview,
        "partners": partners[partner_page * PARTNERS_PER_PAGE:(partner_page + 1) * PARTNERS_PER_PAGE],
        "partners_page": Page(partner_page * PARTNERS_PER_PAGE, PARTNERS_PER_PAGE, len(partners)),
        "counts": {state.value: overview.count(state) for state in PartnerHealth},
        "failed_total": overview.queue.failed,
        "groups": groups[failed_page * GROUPS_PER_PAGE:(failed_page + 1) * GROUPS_PER_PAGE],
        "groups_page": Page(failed_page * GROUPS_PER_PAGE, GROUPS_PER_PAGE, len(groups)),
        "pages": {"items": item_page, "partners": partner_page, "failed": failed_page},
        "attempts": recent.attempts,
        "chart": chart,
        "behind_after": ops.BEHIND_AFTER.total_seconds(),
    }
    response = _render(request, "ops_dashboard.html", context)
    if flash is not None:
        _clear_cookie(response, dashboard, FLASH_COOKIE)
    return response


# --- the 24-hour chart -------------------------------------------------------------------------------


async def hourly_activity(ctx: ops.OpsContext, now: datetime, hours: int = CHART_HOURS) -> list[dict[str, Any]]:
    """Polls (ledger lines, summed by ``count``) and acknowledged pushes (lines of feed ``push:*``) per
    hour, over every partner's ledger, oldest hour first; the last bucket is the hour in progress."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    await ctx.ledger.flush()
    return [{"start": start + timedelta(hours=i), "polls": polls, "pushes": pushes}
            for i, (polls, pushes) in enumerate(await ctx.ledger.activity(start, hours))]


def activity_chart(buckets: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Geometry for the inline SVG: two bar rows (polls, pushes), each scaled to its own maximum."""
    width, left, right, bar_gap = 760, 64, 8, 2
    panel, top_pad, label_h = 70, 18, 18
    slot = (width - left - right) / max(1, len(buckets))
    panels = []
    for row, (field, label, css) in enumerate((("polls", "Polls", "polls"), ("pushes", "Pushes", "pushes"))):
        y0 = row * (panel + top_pad) + top_pad
        peak = max((b[field] for b in buckets), default=0)
        bars = []
        for i, bucket in enumerate(buckets):
            value = bucket[field]
            h = 0.0 if peak == 0 else max(1.5, panel * value / peak) if value else 0.0
            bars.append({"x": round(left + i * slot + bar_gap / 2, 1), "y": round(y0 + panel - h, 1),
                         "w": round(slot - bar_gap, 1), "h": round(h, 1), "value": value,
                         "hour": bucket["start"].strftime("%H:00")})
        panels.append({"label": label, "css": css, "y0": y0, "base": y0 + panel, "peak": peak,
                       "total": sum(b[field] for b in buckets), "bars": bars})
    height = 2 * (panel + top_pad) + label_h
    ticks = [{"x": round(left + i * slot + slot / 2, 1), "label": b["start"].strftime("%H:00")}
             for i, b in enumerate(buckets) if i % 3 == 0 or i == len(buckets) - 1]
    return {"width": width, "height": height, "left": left, "right": width - right, "panels": panels,
            "ticks": ticks, "tick_y": height - 4}


# --- template filters --------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def _moment(value: datetime | str | None) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def ago(value: datetime | str | None, now: datetime | None = None) -> str:
    moment = _moment(value)
    if moment is None:
        return "never"
    return f"{duration(((now or utc_now()) - moment).total_seconds())} ago"


def utc(value: datetime | str | None) -> str:
    moment = _moment(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def percent(value: float | None) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, int | float) else "—"


# --- wiring ------------------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Templates and ``/ops`` routes. Call from ``create_app`` after the settings are on the app."""
    settings = app[SETTINGS]
    base = settings.base_url
    app[DASHBOARD] = Dashboard(
        session_secret(settings.admin_token, settings.session_secret),
        secure_cookie=base.lower().startswith("https://"),
        allowed_origins={_origin(base)},
    )
    env = aiohttp_jinja2.setup(
        app, app_key=TEMPLATES, autoescape=True,
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"duration": duration, "ago": ago, "utc": utc, "percent": percent})
    add_get(app, "/ops", dashboard_page)
    add_get(app, "/ops/login", login_page)
    add_route(app, "POST", "/ops/login", login)
    add_route(app, "POST", "/ops/logout", logout)
    add_route(app, "POST", "/ops/deliveries/{delivery_id}/retry", retry_delivery)
    add_route(app, "POST", "/ops/destinations/{destination_id}/retry", retry_destination)
