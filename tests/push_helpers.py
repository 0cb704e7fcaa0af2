"""A real push receiver for the tests: an aiohttp app on 127.0.0.1 (a free port) that plays a WebSub
subscriber and a partner's webhook endpoint at once.

* ``GET`` with ``hub.mode=subscribe|unsubscribe`` is a verification of intent: it is answered by
  echoing ``hub.challenge`` (or refused with 404, or answered with a wrong body, as configured);
  ``hub.mode=denied`` is recorded and answered 200.
* ``POST`` is a delivery: recorded with its headers, body and arrival time, then answered 2xx, or
  with a configured failure status a given number of times (then it recovers), or 410 for ever, or
  after a delay.

Every request is recorded before it is answered, so a test can wait for "the request arrived" even
when the answer never gets out (the sender was killed).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from multidict import CIMultiDict

ATOM = "{http://www.w3.org/2005/Atom}"
SYNDICATE = "{urn:x-syndicate:feed-extension:1}"


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict
    body: bytes
    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    answered: int | None = None  # the status the receiver answered (None: still answering)

    @property
    def ok(self) -> bool:
        return self.answered is not None and 200 <= self.answered < 300


@dataclass
class Behaviour:
    verify: str = "echo"  # "echo", "wrong" (2xx, wrong body) or "refuse" (404)
    fail_status: int = 503
    fail_times: int = 0  # answer fail_status this many more times, then recover
    gone: bool = False  # answer 410 to every POST
    retry_after: str | None = None  # sent with failures
    delay_first: float = 0.0  # the first POST is answered only after this many seconds
    delay_every: float = 0.0  # every POST is answered only after this many seconds
    redirect_to: str | None = None  # answer POSTs with 302 to this location
    endless_body: bool = False  # answer POSTs 200 with a body that never ends (until the sender hangs up)
    success_status: int = 200


@dataclass
class Subscriber:
    behaviour: Behaviour = field(default_factory=Behaviour)
    fixed_port: int | None = None  # listen on this port (e.g. one an endpoint was registered on while down)
    verifications: list[Received] = field(default_factory=list)  # GETs with hub.mode
    posts: list[Received] = field(default_factory=list)  # every POST, answered or not
    others: list[Received] = field(default_factory=list)  # anything else (e.g. a redirect followed)
    _server: TestServer | None = None

    # ----- life cycle --------------------------------------------------------------------------

    async def start(self) -> Subscriber:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1", port=self.fixed_port)
        await self._server.start_server()
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def __aenter__(self) -> Subscriber:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.port is not None
        return self._server.port

    def url(self, path: str = "/callback") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # ----- the receiver ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path, dict(request.query), CIMultiDict(request.headers),
                            await request.read(), time.monotonic(), time.time())
        mode = request.query.get("hub.mode")
        behaviour = self.behaviour
        if request.method == "GET" and mode is not None:
            self.verifications.append(received)
            if mode == "denied":
                return self._answer(received, web.Response(status=200))
            if behaviour.verify == "refuse":
                return self._answer(received, web.Response(status=404, text="not me"))
            if behaviour.verify == "wrong":
                return self._answer(received, web.Response(status=200, text="not-the-challenge"))
            return self._answer(received, web.Response(status=200, text=request.query.get("hub.challenge", "")))
        if request.method != "POST":
            self.others.append(received)
            return self._answer(received, web.Response(status=200, text="ok"))
        self.posts.append(received)
        if behaviour.delay_first and len(self.posts) == 1:
            await asyncio.sleep(behaviour.delay_first)
        if behaviour.delay_every:
            await asyncio.sleep(behaviour.delay_every)
        if behaviour.redirect_to is not None:
            return self._answer(received, web.Response(status=302, headers={"Location": behaviour.redirect_to}))
        if behaviour.gone:
            return self._answer(received, web.Response(status=410, text="gone"))
        if behaviour.endless_body and not behaviour.fail_times:
            return await self._endless(request, received)
        if behaviour.fail_times > 0:
            behaviour.fail_times -= 1
            headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            return self._answer(received, web.Response(status=behaviour.fail_status, text="no", headers=headers))
        return self._answer(received, web.Response(status=behaviour.success_status, text="thanks"))

    @staticmethod
    async def _endless(request: web.Request, received: Received) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        received.answered = 200
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(100_000):  # 6.5 GB: far more than any sender should read
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the sender stopped reading and hung up, as it should
        return response

    @staticmethod
    def _answer(received: Received, response: web.Response) -> web.Response:
        received.answered = response.status
        return response

    # ----- what arrived ------------------------------------------------------------------------

    @property
    def delivered(self) -> list[Received]:
        """POSTs this receiver acknowledged (2xx), in arrival order."""
        return [p for p in self.posts if p.ok]

    def verifications_of(self, mode: str) -> list[Received]:
        return [v for v in self.verifications if v.query.get("hub.mode") == mode]


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
                   message: str = "condition") -> object:
    """Poll ``predicate`` (sync or returning an awaitable) until it is truthy; its value, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(interval)


async def stays_false(predicate: Callable[[], object], duration: float, interval: float = 0.02) -> bool:
    """True when ``predicate`` stays falsy for ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return False
        await asyncio.sleep(interval)
    return True


# ----- signatures and documents ------------------------------------------------------------------

def websub_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def parse_link_header(value: str) -> dict[str, str]:
    """rel -> URL of an HTTP ``Link`` header (the simple form the server writes)."""
    links = {}
    for part in value.split(","):
        url, _, params = part.strip().partition(";")
        for param in params.split(";"):
            name, _, rel = param.strip().partition("=")
            if name == "rel":
                links[rel.strip('"')] = url.strip().strip("<>")
    return links


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def atom_entries(document: bytes) -> list[etree._Element]:
    """The entries of an Atom feed document, or the entry of an Atom entry document."""
    root = etree.fromstring(document, _PARSER)
    if root.tag == f"{ATOM}entry":
        return [root]
    return root.findall(f"{ATOM}entry")


def atom_entry(document: bytes, entry_id: str) -> etree._Element | None:
    return next((e for e in atom_entries(document) if e.findtext(f"{ATOM}id") == entry_id), None)


def entry_version(entry: etree._Element) -> int:
    return int(entry.findtext(f"{SYNDICATE}version"))


def entry_fields(entry: etree._Element) -> dict[str, object]:
    """What a reader sees of an entry: id, revision, title, summary, content, links, photos."""
    return {
        "id": entry.findtext(f"{ATOM}id"),
        "version": entry.findtext(f"{SYNDICATE}version"),
        "signal": entry.findtext(f"{SYNDICATE}signal"),
        "pubStatus": entry.findtext(f"{SYNDICATE}pubStatus"),
        "title": entry.findtext(f"{ATOM}title"),
        "summary": entry.findtext(f"{ATOM}summary"),
        "content": entry.findtext(f"{ATOM}content"),
        "updated": entry.findtext(f"{ATOM}updated"),
        "published": entry.findtext(f"{ATOM}published"),
        "links": sorted((link.get("rel") or "", link.get("href") or "") for link in entry.findall(f"{ATOM}link")),
    }


def entry_c14n(entry: etree._Element) -> bytes:
    """The entry's exclusive canonical form: equal for equal entries whatever document holds them."""
    return etree.tostring(entry, method="c14n", exclusive=True)
