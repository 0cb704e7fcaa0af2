"""The storm: the whole product under load and faults, judged only by what crosses HTTP.

Used by ``tests/test_storm.py`` (``make test``: 24 partners, 200 articles) and by ``scripts/bench.py``
(``make bench``: 100 partners, 1,000 articles); both print the same summary (:meth:`StormResult.summary`).

What runs (every process started here, stopped here by its own pid):

* one ``redis-server`` of our own (AOF, ``appendfsync always``, a free port, a temp dir), SIGKILLed
  once mid-storm and restarted on the same port and dir;
* two ``syndicate serve`` processes (``SYNDICATE_WORKERS=OFF``), one of them SIGKILLed once (right
  after it gave a cursor follower a story's last correction, so that poll's receipt is still in its
  flush buffer: issue 11, item 2) and
  restarted on its port;
* one ``syndicate worker`` process (push: dispatcher and deliverer);
* in this process: the partners' clients and push receivers (aiohttp), and the publisher.

Partners (``POST /api/partners``), in four kinds, granted ``latest``, ``world`` or both:

* ``poller``: ``GET /feeds/<feed>/json`` with ``If-None-Match``, every feed it is granted;
* ``cursor``: follows ``next_url`` (``?since=N``) of every feed it is granted;
* ``webhook``: an endpoint (``POST /api/partners/<name>/endpoints``, ninjs) on our receiver;
* ``websub``: a subscription (``POST /hub``) to ``/feeds/<feed>/json`` or ``/atom`` of its granted
  feed, keyed with ``?key=`` or with ``Authorization``.

The publisher posts French (and a few English, world-tagged) stories: every one created, 30%
corrected (``?signal=correction``), some of the corrections re-filing the story into or out of
``world`` (adding or removing the world subject), 5% killed (``DELETE``), at least two of them
re-filed out of ``world`` first (a world-only partner gets a withdrawal, then the kill). Each revision's headline
carries a marker ``[storm <story> r<n>]``, so a ninjs body (which has no server version) maps to the
server's version; JSON Feed and Atom bodies carry the version itself (``_syndicate.version``,
``syndicate:version``). A ninjs notice (a kill's tombstone, or the withdrawal a partner that had the story
gets when it may no longer read a revision) has no headline: it is told by its ``versionCreated``,
which is the version's own (every acknowledged write's answer and every stored record give it), so a
withdrawal of version 2 and the kill at version 3 are two versions, not one sent twice. Only a 2xx answer with its version is an acknowledged write; an error or no
answer leaves the write unknown, and the publisher retries the same document (a stored one answers
``unchanged`` with its version).

At the end (quiescence: every expectation met, or nothing new seen for ``quiet_seconds``, then the
final polls) the result holds:

a. acknowledged revisions lost: an acknowledged version missing from ``GET /api/articles/{id}/versions``
   (or holding another revision's marker); and revisions stored twice: one planned revision's marker at
   two stored versions (a retried write stored anew instead of answered ``unchanged``);
b. stale (partner, story) pairs: the partner may read the story's latest revision (a feed it is granted,
   or a public one, holds it) or has seen an earlier revision of it (issue 11, item 1), and its own log
   does not hold the latest version. A plain poller's pair is excepted (and listed) when the story's
   latest revision belongs in the polled feed but fell out of its window (the final head is full and
   lacks it);
c. propagation mismatches: ``GET /api/propagation`` against the partners' logs, both ways (reported
   received but not in the log; in the log but reported not received, or the partner not listed; an
   acknowledged correction or kill missing from the report);
d. repeats: a revision POSTed again to a destination that had answered it 2xx: "after a crash" when the
   repeat has the same ``X-Syndicate-Delivery`` and the 2xx came in a fault's window (from a few
   seconds before a SIGKILL until the cluster was ready again), else "after 2xx";
e. older-after-newer: a destination sent an older version of a story after a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
from aiohttp import web
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER_TOKEN = "storm-publisher-token-0123456789"
ADMIN_TOKEN = "storm-admin-token-0123456789abcdef"
SECRET = "storm-secret-0123456789abcdef"
PUBLISH = {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
WORLD_SUBJECT = {"name": "armed conflict", "uri": "http://cv.iptc.org/newscodes/mediatopic/16000000"}
OTHER_SUBJECT = {"name": "economy, business and finance", "uri": "http://cv.iptc.org/newscodes/mediatopic/04000000"}
MARKER = re.compile(r"\[storm (s\d+) r(\d+)\]")
ATOM = "{http://www.w3.org/2005/Atom}"
SYNDICATE = "{urn:x-syndicate:feed-extension:1}"
XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)
KINDS = ("poller", "cursor", "webhook", "websub")
GRANTS = (("latest",), ("world",), ("latest",), ("world",), ("latest", "world"))
FAULT_LEAD_SECONDS = 3.0  # a 2xx this long before a SIGKILL may still be repeated (its ack may be lost)
FAULT_TAIL_SECONDS = 3.0  # ... and this long after the cluster is ready again


@dataclass
class StormConfig:
    partners: int = 24
    articles: int = 200
    corrected: float = 0.30  # stories with at least one correction
    twice: float = 0.25  # of the corrected stories, those corrected twice
    killed: float = 0.05
    refiled: float = 0.40  # of the corrections of French stories, those that move the story into or out of world
    withdrawn_then_killed: int = 2  # at least this many stories re-filed out of world and then killed
    english: float = 0.10  # English stories (always world-tagged, in the public headlines feed too)
    seed: int = 11
    publish_seconds: float = 30.0  # creates spread over this window; corrections and kills follow
    poll_interval: float = 0.7
    writers: int = 8  # concurrent publishing requests
    quiet_seconds: float = 40.0  # give up waiting after this long without anything new (> a 30 s reclaim)
    quiesce_timeout: float = 120.0
    flaky_share: float = 0.25  # push destinations that answer 503 once to some deliveries
    push_lease_seconds: float = 2.0
    push_timeout_seconds: float = 3.0
    server_downtime: float = 1.0
    redis_downtime: float = 1.5
    verbose: bool = True


# ----- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_") and k != "REDIS_URL"}
    env.update(overrides)
    return env


@dataclass
class Fault:
    what: str
    killed_at: float  # time.monotonic()
    ready_at: float | None = None  # the cluster answered again

    def covers(self, moment: float) -> bool:
        end = (self.ready_at if self.ready_at is not None else time.monotonic()) + FAULT_TAIL_SECONDS
        return self.killed_at - FAULT_LEAD_SECONDS <= moment <= end


class Cluster:
    """The storm's own processes: a Redis, two servers and a worker. Each is stopped by its pid."""

    def __init__(self, workdir: Path, config: StormConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.redis_dir = workdir / "redis"
        self.redis_port = 0
        self.redis: subprocess.Popen | None = None
        self.server_ports = [free_port(), free_port()]
        self.servers: list[subprocess.Popen | None] = [None, None]
        self.worker: subprocess.Popen | None = None
        self.faults: list[Fault] = []
        self._logs: list[Any] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def base(self, index: int) -> str:
        return f"http://127.0.0.1:{self.server_ports[index]}"

    def _log(self, name: str) -> Any:
        handle = open(self.workdir / f"{name}.log", "ab")  # closed in stop_all
        self._logs.append(handle)
        return handle

    # Redis

    async def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make system installs it)")
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = self.redis_port or free_port()
            assert port != 6379
            self.redis = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.redis_dir), "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "volatile-lru",
                 "--logfile", str(self.redis_dir / "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if await self._redis_answers(port, self.redis):
                self.redis_port = port
                return
            self._reap(self.redis)
            if self.redis_port:  # a restart must keep its port: try again on the same one
                await asyncio.sleep(0.5)
        raise RuntimeError("could not start the storm's redis-server")

    @staticmethod
    async def _redis_answers(port: int, process: subprocess.Popen, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                answer = await asyncio.wait_for(reader.readline(), 2)
                writer.close()
                if answer.startswith(b"+PONG"):
                    return True
            except (TimeoutError, OSError):
                pass
            await asyncio.sleep(0.05)
        return False

    def kill_redis(self) -> None:
        assert self.redis is not None
        os.kill(self.redis.pid, signal.SIGKILL)
        self.redis.wait(10)

    # servers and the worker

    def _env(self, **extra: str) -> dict[str, str]:
        return child_env(
            REDIS_URL=self.redis_url, SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}",
            SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN, SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8",
            SYNDICATE_FEEDS_DIR=str(ROOT / "feeds"),
            SYNDICATE_PUSH_LEASE_SECONDS=str(self.config.push_lease_seconds),
            SYNDICATE_PUSH_TIMEOUT=str(self.config.push_timeout_seconds), **extra)

    def start_server(self, index: int) -> None:
        env = self._env(SYNDICATE_PORT=str(self.server_ports[index]), SYNDICATE_WORKERS="OFF",
                        SYNDICATE_DATA_DIR=str(self.workdir / f"server-{index}"))
        log = self._log(f"server-{index}")
        self.servers[index] = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def start_worker(self) -> None:
        env = self._env(SYNDICATE_DATA_DIR=str(self.workdir / "worker"))
        log = self._log("worker")
        self.worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], cwd=ROOT, env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def kill_server(self, index: int) -> None:
        process = self.servers[index]
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    async def ready(self, session: aiohttp.ClientSession, index: int, workers: int = 0,
                    timeout: float = 60.0) -> None:
        """Wait until server ``index`` answers ``/readyz`` 200 (and counts ``workers`` live workers)."""
        deadline = time.monotonic() + timeout
        while True:
            process = self.servers[index]
            if process is None or process.poll() is not None:
                raise RuntimeError(f"server {index} exited (see {self.workdir}/server-{index}.log)")
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited (see {self.workdir}/worker.log)")
            try:
                async with session.get(f"{self.base(index)}/readyz") as response:
                    body = await response.json(content_type=None)
                    if response.status == 200 and (body.get("workers") or 0) >= workers:
                        return
            except (TimeoutError, aiohttp.ClientError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {index} did not become ready in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def start(self, session: aiohttp.ClientSession) -> None:
        await self.start_redis()
        self.start_server(0)
        self.start_server(1)
        self.start_worker()
        await asyncio.gather(self.ready(session, 0, workers=1), self.ready(session, 1, workers=1))

    async def crash_server(self, session: aiohttp.ClientSession, index: int, downtime: float) -> Fault:
        fault = Fault(f"SIGKILL server {index}", time.monotonic())
        self.faults.append(fault)
        self.kill_server(index)
        await asyncio.sleep(downtime)
        self.start_server(index)
        await self.ready(session, index)
        fault.ready_at = time.monotonic()
        return fault

    async def crash_redis(self, session: aiohttp.ClientSession, downtime: float) -> Fault:
        fault = Fault("SIGKILL redis", time.monotonic())
        self.faults.append(fault)
        self.kill_redis()
        await asyncio.sleep(downtime)
        await self.start_redis()
        await asyncio.gather(self.ready(session, 0, workers=1), self.ready(session, 1, workers=1))
        fault.ready_at = time.monotonic()
        return fault

    @staticmethod
    def _reap(process: subprocess.Popen | None, grace: float = 15.0) -> None:
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop_all(self) -> None:
        """Every process we started, by its pid: the worker and servers first, Redis last."""
        for process in (self.worker, *self.servers, self.redis):
            try:
                self._reap(process)
            except Exception as exc:  # keep stopping the others
                print(f"storm: could not stop pid {process.pid if process else '?'}: {exc}", file=sys.stderr)
        for handle in self._logs:
            handle.close()
        self._logs.clear()


# ----- the plan -------------------------------------------------------------------------------------

@dataclass
class Revision:
    """One planned revision of a story: rev 1 creates it, rev 2.. correct it, rev 0 is the kill."""

    story: str
    rev: int
    world: bool
    at: float  # seconds after the storm starts

    @property
    def kill(self) -> bool:
        return self.rev == 0


@dataclass
class Story:
    name: str  # s0001
    uri: str
    language: str
    revisions: list[Revision]
    article_id: str | None = None

    def revision(self, rev: int) -> Revision:
        return next(r for r in self.revisions if r.rev == rev)


def make_plan(config: StormConfig) -> list[Story]:
    rng = random.Random(config.seed)
    window = config.publish_seconds
    stories = []
    for index in range(config.articles):
        name = f"s{index:04d}"
        english = rng.random() < config.english
        world = True if english else rng.random() < 0.5
        created = window * 0.75 * index / max(1, config.articles - 1) + rng.uniform(0, 0.3)
        stories.append(Story(name, f"https://storm.example.net/{config.seed}/{name}", "en" if english else "fr",
                             [Revision(name, 1, world, created)]))
    corrected = rng.sample(stories, round(config.articles * config.corrected))
    for story in corrected:
        times = 2 if rng.random() < config.twice else 1
        for _ in range(times):
            last = story.revisions[-1]
            world = last.world
            if story.language == "fr" and rng.random() < config.refiled:
                world = not world  # re-filed: into or out of world
            story.revisions.append(Revision(story.name, last.rev + 1, world,
                                            min(last.at + rng.uniform(1.5, 6.0), window)))
    for story in rng.sample(stories, round(config.articles * config.killed)):
        last = story.revisions[-1]
        story.revisions.append(Revision(story.name, 0, last.world, min(last.at + rng.uniform(1.5, 5.0), window + 2)))
    _withdraw_before_kill(stories, config.withdrawn_then_killed)
    return stories


def withdrawn_then_killed(story: Story) -> bool:
    """Re-filed out of world by a correction, then killed: a world-only partner that had it is sent the
    withdrawal, then the kill (two versions of one story, both canceled notices)."""
    content = [r for r in story.revisions if not r.kill]
    return story.revisions[-1].kill and any(a.world and not b.world for a, b in zip(content, content[1:], strict=False))


def _withdraw_before_kill(stories: list[Story], wanted: int) -> None:
    """Make sure the plan has ``wanted`` stories that are withdrawn and then killed: killed French stories
    that were never corrected get a correction re-filing them out of world (their creation in world),
    with time for the withdrawal to go out before the kill. No random draw: the rest of the plan stays."""
    missing = wanted - sum(withdrawn_then_killed(story) for story in stories)
    for story in stories:
        if missing <= 0:
            return
        if story.language != "fr" or len(story.revisions) != 2 or not story.revisions[-1].kill:
            continue
        created, kill = story.revisions
        correction = Revision(story.name, 2, False, created.at + 1.5)
        story.revisions = [Revision(story.name, 1, True, created.at), correction,
                           Revision(story.name, 0, False, max(kill.at, correction.at + 2.0))]
        missing -= 1


def document(story: Story, revision: Revision) -> dict[str, Any]:
    headline = f"{'Storm story' if story.language == 'en' else 'Dépêche'} {story.name} [storm {story.name} r{revision.rev}]"
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    return {
        "uri": story.uri, "type": "text", "version": str(revision.rev), "firstCreated": "2024-06-01T08:00:00+00:00",
        "versionCreated": now, "pubStatus": "usable", "language": story.language,
        "headlines": [{"role": "main", "value": headline}],
        "descriptions": [{"role": "summary", "value": f"Revision {revision.rev} of {story.name}."}],
        "bodies": [{"role": "main", "contentType": "text/html",
                    "value": f"<p>{headline}</p><p>World: {revision.world}.</p>"}],
        "subjects": [WORLD_SUBJECT if revision.world else OTHER_SUBJECT],
    }


# ----- what the partners saw ------------------------------------------------------------------------

@dataclass(frozen=True)
class Sighting:
    """One item a partner received: the story's uri and its version, or the marker to map to one."""

    uri: str
    version: int | None
    marker: tuple[str, int] | None
    canceled: bool
    moment: str | None = None  # a ninjs notice's versionCreated: a withdrawal carries no marker


@dataclass
class Post:
    at: float
    delivery: str
    status: int
    items: list[Sighting]


@dataclass
class Partner:
    name: str
    kind: str
    feeds: tuple[str, ...]
    server: int
    key: str = ""
    fmt: str = "json"  # websub: the topic's format
    keyed_by_header: bool = False  # websub: key sent in Authorization rather than ?key=
    flaky: bool = False
    sightings: list[Sighting] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)  # push destinations
    heads: dict[str, list[str]] = field(default_factory=dict)  # poller: feed -> uris of the last head
    etags: dict[str, str] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)
    verified: bool = False
    denied: int = 0
    errors: int = 0

    @property
    def path(self) -> str:
        return f"/{self.kind}/{self.name}"


def json_sightings(body: bytes) -> tuple[list[Sighting], dict[str, Any]]:
    document = orjson.loads(body)
    items = []
    for item in document.get("items", []):
        extension = item.get("_syndicate") or {}
        version = extension.get("version")
        items.append(Sighting(item["id"], int(version) if version is not None else None, marker_of(item.get("title")),
                              extension.get("pubStatus") == "canceled"))
    return items, document


def atom_sightings(body: bytes) -> list[Sighting]:
    root = etree.fromstring(body, XML_PARSER)
    entries = [root] if root.tag == f"{ATOM}entry" else root.findall(f"{ATOM}entry")
    items = []
    for entry in entries:
        version = entry.findtext(f"{SYNDICATE}version")
        items.append(Sighting(entry.findtext(f"{ATOM}id") or "", int(version) if version else None,
                              marker_of(entry.findtext(f"{ATOM}title")),
                              entry.findtext(f"{SYNDICATE}pubStatus") == "canceled"))
    return items


def ninjs_sightings(body: bytes) -> list[Sighting]:
    document = orjson.loads(body)
    headline = next((h.get("value") for h in document.get("headlines") or [] if h.get("role") == "main"), None)
    return [Sighting(document.get("uri", ""), None, marker_of(headline), document.get("pubStatus") == "canceled",
                     document.get("versionCreated"))]


def marker_of(text: str | None) -> tuple[str, int] | None:
    match = MARKER.search(text or "")
    return (match.group(1), int(match.group(2))) if match else None


class Receivers:
    """One aiohttp app for every push destination: ``/webhook/<partner>`` and ``/websub/<partner>``.
    WebSub verifications are echoed; deliveries are recorded (and answered 2xx, except a flaky
    destination's first attempt of some deliveries, answered 503)."""

    def __init__(self, partners: dict[str, Partner]) -> None:
        self.partners = partners
        self.port = 0
        self.last_post_at = time.monotonic()
        self.unparsed = 0
        self._runner: web.AppRunner | None = None
        self._failed_once: set[str] = set()

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{kind}/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, partner: Partner) -> str:
        return f"http://127.0.0.1:{self.port}{partner.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        partner = self.partners.get(request.match_info["name"])
        if partner is None:
            return web.Response(status=404)
        mode = request.query.get("hub.mode")
        if request.method == "GET" and mode is not None:
            if mode == "denied":
                partner.denied += 1
                return web.Response(text="ok")
            if mode == "subscribe":
                partner.verified = True
            return web.Response(text=request.query.get("hub.challenge", ""))
        if request.method != "POST":
            return web.Response(status=405)
        body = await request.read()
        delivery = request.headers.get("X-Syndicate-Delivery", "")
        now = time.monotonic()
        self.last_post_at = now
        try:
            if partner.kind == "webhook":
                items = ninjs_sightings(body)
            elif partner.fmt == "atom":
                items = atom_sightings(body)
            else:
                items = json_sightings(body)[0]
        except Exception:
            self.unparsed += 1
            items = []
        status = 200
        if partner.flaky and delivery not in self._failed_once and _hash_share(delivery) < 0.2:
            self._failed_once.add(delivery)
            status = 503
        partner.posts.append(Post(now, delivery, status, items))
        if status == 200:
            partner.sightings.extend(items)
        return web.Response(status=status, text="thanks" if status == 200 else "try later")


def _hash_share(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


# ----- the result -----------------------------------------------------------------------------------

@dataclass
class Ack:
    story: str
    rev: int  # 0: the kill
    version: int
    outcome: str
    at: float


@dataclass
class StormResult:
    config: StormConfig
    partners: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    stories: int = 0
    corrections: int = 0
    kills: int = 0
    refilings: int = 0
    acknowledged: int = 0
    unknown_writes: int = 0  # attempts that got an error or no answer
    refused_writes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # one planned revision stored at two versions
    stale: list[str] = field(default_factory=list)
    excepted: list[str] = field(default_factory=list)  # plain pollers whose feed window overflowed
    mismatches: list[str] = field(default_factory=list)
    repeats_after_2xx: list[str] = field(default_factory=list)
    repeats_after_crash: list[str] = field(default_factory=list)
    older_after_newer: list[str] = field(default_factory=list)
    unresolved: int = 0  # received items whose version could not be told
    pushes: int = 0
    polls: int = 0
    client_errors: int = 0
    faults: list[str] = field(default_factory=list)
    quiesced: bool = False
    time_to_quiesce: float = 0.0
    storm_seconds: float = 0.0
    total_seconds: float = 0.0
    workdir: str = ""

    def summary(self) -> str:
        c = self.config
        lines = [
            f"storm: {self.partners} partners ({', '.join(f'{n} {k}' for k, n in self.kinds.items())}), "
            f"{self.stories} stories, {self.corrections} corrections ({self.refilings} re-filings), {self.kills} kills; "
            f"seed {c.seed}",
            f"  faults: {'; '.join(self.faults) or 'none'}",
            f"  acknowledged revisions:   {self.acknowledged}  (write attempts without an answer: {self.unknown_writes}, "
            f"refused: {len(self.refused_writes)})",
            f"  lost:                     {len(self.lost)}",
            f"  stored twice:             {len(self.duplicates)}",
            f"  stale (partner, story):   {len(self.stale)}  (excepted, feed window overflowed: {len(self.excepted)})",
            f"  report mismatches:        {len(self.mismatches)}",
            f"  repeats after 2xx:        {len(self.repeats_after_2xx)}",
            f"  repeats after crash:      {len(self.repeats_after_crash)}",
            f"  older-after-newer:        {len(self.older_after_newer)}",
            f"  time to quiesce:          {self.time_to_quiesce:.1f} s after the last write"
            f"{'' if self.quiesced else ' (expectations still unmet when nothing new came for ' + str(c.quiet_seconds) + ' s)'}",
            f"  pushes received: {self.pushes}, polls: {self.polls}, client errors tolerated: {self.client_errors}, "
            f"items of unknown version: {self.unresolved}",
            f"  storm {self.storm_seconds:.0f} s, total {self.total_seconds:.0f} s; logs in {self.workdir}",
        ]
        for title, entries in (("lost", self.lost), ("stored twice", self.duplicates), ("stale", self.stale),
                               ("excepted", self.excepted),
                               ("report mismatches", self.mismatches),
                               ("repeats after 2xx", self.repeats_after_2xx),
                               ("repeats after crash", self.repeats_after_crash),
                               ("older-after-newer", self.older_after_newer),
                               ("refused writes", self.refused_writes)):
            if entries:
                lines.append(f"  {title} (first {min(len(entries), 12)} of {len(entries)}):")
                lines.extend(f"    {entry}" for entry in entries[:12])
        return "\n".join(lines)


# ----- the storm ------------------------------------------------------------------------------------

class Storm:
    def __init__(self, config: StormConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.cluster = Cluster(workdir, config)
        self.plan = make_plan(config)
        self.stories = {story.name: story for story in self.plan}
        self.by_uri = {story.uri: story for story in self.plan}
        self.partners: dict[str, Partner] = {}
        self.receivers = Receivers(self.partners)
        self.acks: list[Ack] = []
        self.result = StormResult(config, workdir=str(workdir))
        self.stopping = asyncio.Event()
        self.last_progress = time.monotonic()
        self.feed_limits = feed_limits()
        self.session: aiohttp.ClientSession | None = None
        self.moments: Moments = {}  # (uri, versionCreated) -> version: acknowledged writes, then the store
        self._seen: set[tuple[str, str, int | None, tuple[str, int] | None]] = set()
        # Set when a cursor follower on server 0 has just been given a story's last correction: the SIGKILL
        # of server 0 comes right then, while that poll's receipt is still in the server's flush buffer.
        self.cursor_fed = asyncio.Event()
        self.cursor_fed_with: tuple[str, list[Sighting], float] | None = None

    def say(self, text: str) -> None:
        if self.config.verbose:
            print(f"storm [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # the run

    async def run(self) -> StormResult:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=400)
        timeout = aiohttp.ClientTimeout(total=15)
        tasks: list[asyncio.Task] = []
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                self.session = session
                await self.receivers.start()
                await self.cluster.start(session)
                self.say(f"cluster up: redis :{self.cluster.redis_port}, servers :{self.cluster.server_ports}, "
                         f"receivers :{self.receivers.port}")
                await self.make_partners()
                self.say(f"{len(self.partners)} partners ready")
                for partner in self.partners.values():
                    if partner.kind in ("poller", "cursor"):
                        tasks.append(asyncio.create_task(self.client_loop(partner)))
                storm_started = time.monotonic()
                faults = asyncio.create_task(self.faults())
                await self.publish_all()
                await faults
                self.result.storm_seconds = time.monotonic() - storm_started
                self.say(f"published: {len(self.acks)} acknowledged writes; waiting for quiescence")
                await self.quiesce()
                self.stopping.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                tasks.clear()
                await self.final_polls()
                await asyncio.sleep(2.0)  # every process's ledger flush (100 ms) with slack
                truth = await self.read_store()
                report = await self.admin_get("/api/propagation?limit=500")  # every item, on one page
                if report is not None and len(report.get("items", [])) < report.get("totalItems", 0):
                    raise AssertionError(f"the report has {report['totalItems']} items; raise the page limit")
                self.analyse(truth, report)
        finally:
            self.stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.receivers.close()
            self.cluster.stop_all()
        self.result.faults = [f"{f.what} (back after {((f.ready_at or f.killed_at) - f.killed_at):.1f} s)"
                              for f in self.cluster.faults]
        self.result.total_seconds = time.monotonic() - started
        (self.workdir / "storm-result.json").write_bytes(orjson.dumps(
            self.result, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o),
            option=orjson.OPT_INDENT_2))
        (self.workdir / "storm-summary.txt").write_text(self.result.summary() + "\n")
        return self.result

    # setup

    async def make_partners(self) -> None:
        config = self.config
        rng = random.Random(config.seed + 1)
        flaky_left = round(config.partners / 2 * config.flaky_share)
        for index in range(config.partners):
            kind = KINDS[index % len(KINDS)]
            feeds = GRANTS[(index // len(KINDS)) % len(GRANTS)]
            # Every kind on both servers (index % 2 alone would put each kind on one server).
            partner = Partner(f"storm-{kind}-{index:03d}", kind, feeds, server=(index + index // len(KINDS)) % 2)
            if kind == "websub":
                partner.feeds = feeds[:1]
                partner.fmt = "atom" if (index // len(KINDS)) % 2 else "json"
                partner.keyed_by_header = rng.random() < 0.5
            if kind in ("webhook", "websub") and flaky_left > 0 and index % 3 == 2:
                partner.flaky = True
                flaky_left -= 1
            self.partners[partner.name] = partner
        for partner in self.partners.values():
            body = {"name": partner.name, "feeds": list(partner.feeds), "formats": ["json", "atom"],
                    "rate_limit": 1_000_000}
            created = await self.must(lambda b=body: self.http("POST", 0, "/api/partners", ADMIN_JSON, orjson.dumps(b)),
                                      201, f"create partner {partner.name}")
            partner.key = created["key"]
        for partner in self.partners.values():
            if partner.kind == "webhook":
                body = {"url": self.receivers.url(partner), "format": "ninjs", "secret": SECRET}
                await self.must(lambda p=partner, b=body: self.http(
                    "POST", p.server, f"/api/partners/{p.name}/endpoints", ADMIN_JSON, orjson.dumps(b)),
                    201, f"add the endpoint of {partner.name}")
        await asyncio.sleep(0.5)  # the other process's key table hears of the partners
        subscribers = [p for p in self.partners.values() if p.kind == "websub"]
        for partner in subscribers:
            base = self.cluster.base(partner.server)
            topic = f"{base}/feeds/{partner.feeds[0]}/{partner.fmt}"
            headers = {}
            if partner.keyed_by_header:
                headers["Authorization"] = f"Bearer {partner.key}"
            else:
                topic += f"?key={partner.key}"
            form = {"hub.mode": "subscribe", "hub.callback": self.receivers.url(partner), "hub.topic": topic,
                    "hub.secret": SECRET, "hub.lease_seconds": "86400"}
            await self.must(lambda p=partner, h=headers, f=form: self.http("POST", p.server, "/hub", h, form=f),
                            202, f"subscribe {partner.name}")
        await wait_until(lambda: all(p.verified for p in subscribers), 30, "every subscription verified")
        # Saved after the verification answers: wait until ops count them (or give it a moment).
        try:
            await wait_until_async(self._subscriptions_saved, 30, "every subscription saved")
        except AssertionError:
            self.say("ops do not count every subscription as saved; going on")
        self.result.partners = len(self.partners)
        self.result.kinds = {kind: sum(p.kind == kind for p in self.partners.values()) for kind in KINDS}

    async def _subscriptions_saved(self) -> bool:
        status = await self.admin_get("/api/status", quiet=True)
        queue = (status or {}).get("queue") or {}
        wanted = sum(p.kind == "websub" for p in self.partners.values())
        return queue.get("subscriptions", wanted) >= wanted

    # HTTP

    async def http(self, method: str, server: int, path: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None, form: dict[str, str] | None = None,
                   timeout: float | None = None) -> tuple[int, dict[str, str], bytes]:
        assert self.session is not None
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            kwargs["data"] = body
        if form is not None:
            kwargs["data"] = form
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.session.request(method, self.cluster.base(server) + path, **kwargs) as response:
            return response.status, dict(response.headers), await response.read()

    async def must(self, call, status: int, what: str, attempts: int = 20) -> dict[str, Any]:
        last = ""
        for _ in range(attempts):
            try:
                got, _headers, body = await call()
                if got == status:
                    return orjson.loads(body) if body else {}
                last = f"{got} {body[:300]!r}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.5)
        raise RuntimeError(f"storm: could not {what}: {last}")

    async def admin_get(self, path: str, quiet: bool = False) -> dict[str, Any] | None:
        for attempt in range(10):
            try:
                status, _h, body = await self.http("GET", attempt % 2, path, ADMIN, timeout=120)
                if status == 200:
                    return orjson.loads(body)
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(1)
        if quiet:
            return None
        raise RuntimeError(f"storm: GET {path} failed")

    # the publisher

    async def publish_all(self) -> None:
        limit = asyncio.Semaphore(self.config.writers)
        start = time.monotonic()
        await asyncio.gather(*(self.publish_story(story, start, limit) for story in self.plan))

    async def publish_story(self, story: Story, start: float, limit: asyncio.Semaphore) -> None:
        for revision in story.revisions:
            await asyncio.sleep(max(0.0, start + revision.at - time.monotonic()))
            async with limit:
                await self.write(story, revision)

    async def write(self, story: Story, revision: Revision) -> None:
        """One revision, retried until it is acknowledged (2xx with its version) or refused."""
        if revision.kill:
            if story.article_id is None:
                return  # never acknowledged as created: nothing to kill
            method, path, body = "DELETE", f"/api/articles/{story.article_id}?reason=storm", None
        else:
            query = "?signal=correction" if revision.rev > 1 else ""
            method, path, body = "POST", f"/api/articles{query}", orjson.dumps(document(story, revision))
        server = random.Random(f"{story.name}{revision.rev}").randrange(2)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                status, _headers, answer = await self.http(method, server, path, PUBLISH, body, timeout=10)
            except (TimeoutError, aiohttp.ClientError):
                status, answer = 0, b""
            if 200 <= status < 300:
                result = orjson.loads(answer)
                story.article_id = result["id"]
                note_moment(self.moments, story.uri, result.get("versionCreated"), int(result["version"]))
                self.acks.append(Ack(story.name, revision.rev, int(result["version"]), result.get("outcome", "?"),
                                     time.monotonic()))
                return
            if status in (400, 404, 409, 413, 415, 422):
                self.result.refused_writes.append(f"{story.name} r{revision.rev}: {status} {answer[:200]!r}")
                return
            self.result.unknown_writes += 1
            server = 1 - server
            await asyncio.sleep(0.3)
        self.result.refused_writes.append(f"{story.name} r{revision.rev}: never acknowledged")

    async def faults(self) -> None:
        config = self.config
        session = self.session
        assert session is not None
        await asyncio.sleep(config.publish_seconds * 0.35)
        self.cursor_fed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.cursor_fed.wait(), 10)
        trigger = self.cursor_fed_with if self.cursor_fed.is_set() else None
        fault = await self.cluster.crash_server(session, 0, config.server_downtime)
        if trigger is not None:
            name, fed, at = trigger
            stories = ", ".join(f"{self.by_uri[i.uri].name if i.uri in self.by_uri else i.uri} v{i.version}"
                                for i in fed[:3])
            fault.what += f" {1000 * (fault.killed_at - at):.0f} ms after it gave {name} {stories}"
        self.say(f"{fault.what}: back after {fault.ready_at - fault.killed_at:.1f} s")
        await asyncio.sleep(config.publish_seconds * 0.30)
        fault = await self.cluster.crash_redis(session, config.redis_downtime)
        self.say(f"{fault.what}: back after {fault.ready_at - fault.killed_at:.1f} s")

    # the pollers

    async def client_loop(self, partner: Partner) -> None:
        rng = random.Random(partner.name)
        await asyncio.sleep(rng.uniform(0, self.config.poll_interval))
        while not self.stopping.is_set():
            for feed in partner.feeds:
                await self.poll(partner, feed)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.poll_interval * rng.uniform(0.7, 1.3))

    async def poll(self, partner: Partner, feed: str) -> None:
        """One poll (a plain poller) or one walk of the cursor to its end (a cursor follower); an error
        is counted and left for the next round."""
        try:
            if partner.kind == "poller":
                await self._poll_head(partner, feed)
            else:
                for _page in range(100):
                    if not await self._poll_cursor(partner, feed):
                        break
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            partner.errors += 1
            self.result.client_errors += 1

    async def _poll_head(self, partner: Partner, feed: str) -> None:
        headers = {"X-API-Key": partner.key}
        if feed in partner.etags:
            headers["If-None-Match"] = partner.etags[feed]
        status, response_headers, body = await self.http("GET", partner.server, f"/feeds/{feed}/json", headers)
        self.result.polls += 1
        if status == 200:
            items, _document = json_sightings(body)
            self.saw(partner, items)
            partner.heads[feed] = [item.uri for item in items]
            if "ETag" in response_headers:
                partner.etags[feed] = response_headers["ETag"]
        elif status != 304:
            partner.errors += 1
            self.result.client_errors += 1

    async def _poll_cursor(self, partner: Partner, feed: str) -> bool:
        """One page; True when it held items (so the next page may hold more)."""
        cursor = partner.cursors.get(feed)
        path = f"/feeds/{feed}/json" + (f"?since={cursor}" if cursor is not None else "")
        status, _headers, body = await self.http("GET", partner.server, path, {"X-API-Key": partner.key})
        self.result.polls += 1
        if status == 200:
            items, document = json_sightings(body)
            self.saw(partner, items)
            # A correction that is its story's last revision (so no later one heals a lost receipt).
            fed = [i for i in items if (i.version or 0) > 1 and i.marker is not None and i.marker[0] in self.stories
                   and self.stories[i.marker[0]].revisions[-1].rev == i.marker[1]]
            if partner.server == 0 and fed and not self.cursor_fed.is_set():
                self.cursor_fed_with = (partner.name, fed, time.monotonic())
                self.cursor_fed.set()
            next_url = document.get("next_url")
            if next_url:
                partner.cursors[feed] = parse_qs(urlsplit(next_url).query)["since"][0]
            return bool(items) and cursor is not None
        if status == 410:  # the cursor left the change log: start again from the head
            partner.cursors.pop(feed, None)
        if status not in (204, 304):
            partner.errors += 1
            self.result.client_errors += 1
        return False

    def saw(self, partner: Partner, items: Iterable[Sighting]) -> None:
        for item in items:
            partner.sightings.append(item)
            key = (partner.name, item.uri, item.version, item.marker)
            if key not in self._seen:
                self._seen.add(key)
                self.last_progress = time.monotonic()

    async def final_polls(self) -> None:
        pollers = [p for p in self.partners.values() if p.kind in ("poller", "cursor")]
        await asyncio.gather(*(self.poll(p, feed) for p in pollers for feed in p.feeds))
        await asyncio.gather(*(self.catch_up(p) for p in pollers))

    async def catch_up(self, partner: Partner) -> None:
        """What a poller does as the README says: ask ``/api/me/status`` what it has missed (a story
        re-filed out of its feeds leaves the feed, so only this tells it of the withdrawal) and fetch
        each item it lists."""
        try:
            status, _headers, body = await self.http("GET", partner.server, "/api/me/status",
                                                     {"X-API-Key": partner.key})
            if status != 200:
                partner.errors += 1
                self.result.client_errors += 1
                return
            for missed in orjson.loads(body).get("missed", []):
                path = urlsplit(missed["links"]["item"]).path
                status, _headers, item = await self.http("GET", partner.server, path, {"X-API-Key": partner.key})
                if status == 200:
                    self.saw(partner, ninjs_sightings(item))
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            partner.errors += 1
            self.result.client_errors += 1

    # quiescence

    async def quiesce(self) -> None:
        """Until every expectation is met (and the queue is empty, and nothing was pushed for 3 s), or
        until nothing new has arrived for ``quiet_seconds``, or ``quiesce_timeout``."""
        config = self.config
        last_write = max((ack.at for ack in self.acks), default=time.monotonic())
        deadline = time.monotonic() + config.quiesce_timeout
        self.last_progress = max(self.last_progress, last_write)
        waiting_from = time.monotonic()  # the faults are over: the quiet period counts from here at the earliest
        posts_seen = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            posts = sum(len(p.posts) for p in self.partners.values())
            if posts != posts_seen:
                posts_seen = posts
                self.last_progress = max(self.last_progress, self.receivers.last_post_at)
            now = time.monotonic()
            quiet_push = now - self.receivers.last_post_at >= 3.0
            if quiet_push and not self.outstanding(self.ack_versions(), self.model_latest()):
                status = await self.admin_get("/api/status", quiet=True)
                queue = (status or {}).get("queue") or {}
                if not queue.get("depth") and not queue.get("due") and not queue.get("inFlight"):
                    self.result.quiesced = True
                    break
            if now - max(self.last_progress, waiting_from) >= config.quiet_seconds:
                self.say(f"nothing new for {config.quiet_seconds:.0f} s: "
                         f"{len(self.outstanding(self.ack_versions(), self.model_latest()))} pairs still outstanding")
                break
        self.result.time_to_quiesce = max(0.0, self.last_progress - last_write)
        self.say(f"quiesced={self.result.quiesced}, last progress {self.result.time_to_quiesce:.1f} s after the last write")

    # the model

    def ack_versions(self) -> dict[tuple[str, int], int]:
        return {(ack.story, ack.rev): ack.version for ack in self.acks}

    def model_latest(self) -> dict[str, tuple[int, Revision]]:
        """story -> (version, planned revision) of its newest acknowledged revision."""
        latest: dict[str, tuple[int, Revision]] = {}
        for ack in self.acks:
            if ack.story not in latest or ack.version > latest[ack.story][0]:
                latest[ack.story] = (ack.version, self.stories[ack.story].revision(ack.rev))
        return latest

    def holds(self, feed: str, story: Story, revision: Revision) -> bool:
        if feed == "latest":
            return True
        if feed == "world":
            return revision.world
        if feed == "headlines":
            return story.language == "en"
        return False

    def readable(self, partner: Partner) -> tuple[str, ...]:
        """The feeds a partner may read: its grants and every public feed."""
        return (*partner.feeds, *(name for name, (public, _limit) in self.feed_limits.items() if public))

    def versions_seen(self, partner: Partner, versions: dict[tuple[str, int], int]) -> dict[str, set[int]]:
        seen: dict[str, set[int]] = defaultdict(set)
        for item in partner.sightings:
            version = resolve(item, versions, self.moments)
            if version is not None:
                seen[item.uri].add(version)
        return seen

    def outstanding(self, versions: dict[tuple[str, int], int], latest: dict[str, tuple[int, Revision]],
                    with_exceptions: bool = False) -> list[str]:
        """(partner, story) pairs that must have the story's latest version and do not (issue 11,
        item 1: it may read the latest revision, or it had an earlier one)."""
        stale = []
        for partner in self.partners.values():
            seen = self.versions_seen(partner, versions)
            for name, (version, revision) in latest.items():
                story = self.stories[name]
                had = seen.get(story.uri, set())
                entitled = any(self.holds(feed, story, revision) for feed in self.readable(partner))
                if not (entitled or had) or (had and max(had) >= version):
                    continue
                line = (f"{partner.name} ({partner.kind}, {'+'.join(partner.feeds)}): {name} "
                        f"{'in ' + ','.join(f for f in self.readable(partner) if self.holds(f, story, revision)) if entitled else 'not readable now'}, "
                        f"latest v{version}{' (kill)' if revision.kill else ''}, saw {sorted(had) or 'nothing'}")
                if with_exceptions and self.overflowed(partner, story, revision):
                    self.result.excepted.append(line)
                else:
                    stale.append(line)
        return stale

    def overflowed(self, partner: Partner, story: Story, revision: Revision) -> bool:
        """A plain poller that could not see the revision in any head it polls: the feed holds it but
        its final head is full and lacks the story."""
        if partner.kind != "poller":
            return False
        holding = [feed for feed in partner.feeds if self.holds(feed, story, revision)]
        return bool(holding) and all(
            len(partner.heads.get(feed, [])) >= self.feed_limits.get(feed, (False, 100))[1]
            and story.uri not in partner.heads.get(feed, []) for feed in holding)

    # the truth and the verdict

    async def read_store(self) -> dict[str, list[dict[str, Any]]]:
        """story -> every stored revision record (``/api/articles/{id}/versions/{v}``), oldest first."""
        limit = asyncio.Semaphore(16)

        async def get(path: str) -> dict[str, Any]:
            async with limit:
                return await self.must(lambda: self.http("GET", 1, path, PUBLISH), 200, f"GET {path}")

        async def story_records(story: Story) -> tuple[str, list[dict[str, Any]]]:
            if story.article_id is None:
                return story.name, []
            listing = await get(f"/api/articles/{story.article_id}/versions")
            records = await asyncio.gather(*(get(entry["href"]) for entry in listing["versions"]))
            return story.name, list(records)

        return dict(await asyncio.gather(*(story_records(story) for story in self.plan)))

    def analyse(self, truth: dict[str, list[dict[str, Any]]], report: dict[str, Any] | None) -> None:
        result = self.result
        result.stories = sum(1 for s in self.plan if truth.get(s.name))
        # What the store holds: marker -> version, each story's latest.
        versions: dict[tuple[str, int], int] = {}
        stored: dict[str, dict[int, tuple[str, int] | None]] = {}
        latest: dict[str, tuple[int, Revision]] = {}
        for name, records in truth.items():
            story = self.stories[name]
            stored[name] = {}
            for record in records:
                version = int(record["version"])
                note_moment(self.moments, story.uri, record.get("versionCreated"), version)
                doc = record.get("document") or {}
                if record.get("pubStatus") == "canceled" or doc.get("pubStatus") == "canceled":
                    marker: tuple[str, int] | None = (name, 0)
                else:
                    marker = marker_of(next((h.get("value") for h in doc.get("headlines") or []
                                             if h.get("role") == "main"), None))
                stored[name][version] = marker
                if marker is not None and marker in versions:
                    # The publisher writes each planned revision once (retrying the same bytes, which a
                    # stored revision answers `unchanged`): one marker at two versions is a write stored twice.
                    result.duplicates.append(f"{name} r{marker[1]}: stored as v{versions[marker]} and v{version}")
                if marker is not None:
                    versions[marker] = version
                    if name not in latest or version > latest[name][0]:
                        latest[name] = (version, story.revision(marker[1]))
        result.corrections = sum(1 for m in versions if m[1] > 1)
        result.kills = sum(1 for m in versions if m[1] == 0)
        result.refilings = sum(1 for (name, rev) in versions if rev > 1 and (name, rev - 1) in versions
                               and self.stories[name].revision(rev).world != self.stories[name].revision(rev - 1).world)
        # a. acknowledged revisions lost
        result.acknowledged = len(self.acks)
        for ack in self.acks:
            got = stored.get(ack.story, {})
            if ack.version not in got:
                result.lost.append(f"{ack.story} r{ack.rev}: acknowledged as v{ack.version}, not stored")
            elif got[ack.version] != (ack.story, ack.rev):
                result.lost.append(f"{ack.story} r{ack.rev}: acknowledged as v{ack.version}, stored v{ack.version} "
                                   f"is {got[ack.version]}")
        # b. stale partners
        result.stale = self.outstanding(versions, latest, with_exceptions=True)
        # c. the propagation report against the partners' logs
        seen = {p.name: self.versions_seen(p, versions) for p in self.partners.values()}
        for partner in self.partners.values():
            for item in partner.sightings:
                if resolve(item, versions, self.moments) is None:
                    result.unresolved += 1
        reported: dict[tuple[str, int], dict[str, Any]] = {}
        for item in (report or {}).get("items", []):
            story = self.by_uri.get(item.get("uri", ""))
            if story is None:
                continue
            reported[(story.name, int(item["version"]))] = item
            listed = {row["partner"]: row for row in item.get("partners", [])}
            for partner in self.partners.values():
                had = seen[partner.name].get(story.uri, set())
                saw_it = bool(had) and max(had) >= int(item["version"])
                row = listed.get(partner.name)
                where = f"{item.get('kind')} {story.name} v{item['version']}"
                if row is None:
                    # Not listed: it was not owed this revision (it could not read it and had not had an
                    # earlier one). Only a partner that saw this very revision, or had the story before
                    # it, must be listed.
                    version = int(item["version"])
                    if version in had or any(v < version for v in had):
                        result.mismatches.append(f"{partner.name} saw {where} (saw {sorted(had)}), the report does not list it")
                elif row.get("received") and not saw_it:
                    result.mismatches.append(f"{partner.name}: the report says it received {where} "
                                             f"(v{row.get('receivedVersion')}), its log has {sorted(had) or 'nothing'}")
                elif not row.get("received") and saw_it:
                    result.mismatches.append(f"{partner.name}: the report says {where} is outstanding "
                                             f"(received v{row.get('receivedVersion')}), its log has {sorted(had)}")
        for ack in self.acks:
            if (ack.rev > 1 or ack.rev == 0) and (ack.story, ack.version) not in reported:
                result.mismatches.append(f"{'kill' if ack.rev == 0 else 'correction'} {ack.story} v{ack.version}: "
                                         "acknowledged, not in the report")
        # d, e. repeats and order, per destination and story
        for partner in self.partners.values():
            if partner.kind not in ("webhook", "websub"):
                continue
            result.pushes += len(partner.posts)
            acked: dict[tuple[str, int], Post] = {}
            newest: dict[str, int] = {}
            for post in partner.posts:
                for item in post.items:
                    version = resolve(item, versions, self.moments)
                    if version is None:
                        continue
                    name = self.by_uri[item.uri].name if item.uri in self.by_uri else item.uri
                    if version < newest.get(name, 0):
                        result.older_after_newer.append(f"{partner.name}: {name} v{version} after v{newest[name]}")
                    newest[name] = max(newest.get(name, 0), version)
                    earlier = acked.get((name, version))
                    if earlier is not None:
                        line = (f"{partner.name}: {name} v{version} again {post.at - earlier.at:.1f} s after its 2xx "
                                f"(delivery {'same' if post.delivery == earlier.delivery else 'different'})")
                        crash = post.delivery == earlier.delivery and any(
                            f.covers(earlier.at) and f.killed_at - FAULT_LEAD_SECONDS <= post.at
                            for f in self.cluster.faults)
                        (result.repeats_after_crash if crash else result.repeats_after_2xx).append(line)
                    if post.status == 200 and (name, version) not in acked:
                        acked[(name, version)] = post


# (uri, versionCreated) -> version: how a ninjs notice (a kill or a withdrawal, no headline) is told apart.
Moments = dict[tuple[str, datetime], int]


def moment(text: str | None) -> datetime | None:
    """A ``versionCreated`` as an instant (``Z`` and ``+00:00`` alike), None when absent or unreadable."""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def note_moment(moments: Moments, uri: str, version_created: str | None, version: int) -> None:
    at = moment(version_created)
    if at is not None:
        moments[(uri, at)] = version


def resolve(item: Sighting, versions: dict[tuple[str, int], int], moments: Moments) -> int | None:
    """The server version of what a partner received: given (JSON Feed, Atom), or by its marker (a ninjs
    revision), or, for a ninjs notice, by its ``versionCreated``: a withdrawal carries the withdrawn
    version's, a kill's tombstone the kill's. (Not "the story's kill" for every canceled notice: a story
    re-filed out of a partner's feeds and later killed sends that partner a withdrawal, then the kill,
    two versions with two delivery ids, which that rule counted as one version sent twice.)"""
    if item.version is not None:
        return item.version
    if item.marker is not None and item.marker in versions:
        return versions[item.marker]
    if item.canceled:
        at = moment(item.moment)
        return moments.get((item.uri, at)) if at is not None else None
    return None


def feed_limits() -> dict[str, tuple[bool, int]]:
    """feed -> (public, limit), from ``feeds/*.toml`` plus the built-in ``latest``."""
    limits = {"latest": (False, 100)}
    for path in sorted((ROOT / "feeds").glob("*.toml")):
        data = tomllib.loads(path.read_text())
        limits[data.get("name", path.stem)] = (bool(data.get("public", False)), int(data.get("limit", 100)))
    return limits


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"storm: timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_until_async(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"storm: timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.5)


async def run_storm(config: StormConfig, workdir: Path) -> StormResult:
    workdir.mkdir(parents=True, exist_ok=True)
    return await Storm(config, workdir).run()
