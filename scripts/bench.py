#!/usr/bin/env python3
"""The benchmark behind docs/benchmarks.md (and the README's summary of it).

Run it with ``make bench`` (it is not a test). It needs root only to install Debian's ``nginx`` and
``wrk`` when they are missing. Everything it starts listens on 127.0.0.1, on free ports (never 6379),
with its data in a temporary directory, and is stopped at the end; no system configuration is read
or written (nginx runs as a foreground child with its own prefix and config file).

What it measures, in this order:

a. Rendering, in process: each pure renderer on a 50-item page (memo of per-item fragments empty,
   "cold", and filled, "warm"), the compression of each format (gzip + brotli + ETags, as
   ``Representation.encode`` does it), and ``FeedBuilder.render`` for all four formats, which is
   what a page costs when it is (re)built: cold, after one of the 50 articles changed, and with
   every item memoised. Medians of ``--runs`` runs.
b. Throughput of a cached ``GET /feeds/latest/atom`` (identity; gzip) and of a 304 answer to
   ``If-None-Match``, each beside nginx serving the same bytes from a file (``gzip_static`` with the
   exact gzip bytes the server sends; nginx's own ETag for the 304), one aiohttp process against
   nginx ``worker_processes 1``, wrk with the same threads and connections, runs alternating
   server/nginx, ``--rounds`` rounds of ``--duration`` seconds, medians reported.
c. Cross-process staleness: two server processes on one Redis; a revision is posted to A and B's
   ``/feeds/latest/json`` is polled (conditional GETs in a tight loop) until it shows the revision;
   the delay is taken from A's acknowledgement.
d. Redis memory per 1,000 articles: ``used_memory`` before and after importing 1,000 seed-sized
   articles (and, in a second empty Redis, 1,000 articles with two revisions each).
e. Push: for 1, 100 and 1,000 WebSub subscribers (``--push-subscribers``), each on a fresh Redis and
   server (``SYNDICATE_PUSH_ALLOW_NETWORKS=127.0.0.0/8``): the callbacks live in ONE helper process
   (this script with ``--push-subscriber-helper``: an aiohttp app serving ``/cb/<i>`` on one or
   ``--push-ports`` loopback ports) that answers verification and records each POST's arrival time
   and ``X-Syndicate-Delivery``, checking ``X-Hub-Signature``. Articles are published one at a time;
   latency is from the publishing call's answer to each arrival (p50, p99 over every subscriber and
   article), and signed deliveries per second over the whole run.

f. The storm (issue 11): ``tests/storm.py`` at ``--storm-partners`` (100) partners and
   ``--storm-articles`` (1,000) stories, with its own Redis, two servers and a worker, one server and
   the Redis SIGKILLed mid-storm; it prints the same figures as ``tests/test_storm.py`` (acknowledged,
   lost, stale, report mismatches, repeats after 2xx and after a crash, older-after-newer, time to
   quiesce). ``--write-docs`` puts them between ``<!-- storm:start -->``/``<!-- storm:end -->`` when
   docs/benchmarks.md has those markers.

h. Scaling (``docs/scaling.md``): cached GET (gzip, 304) and ingest throughput of ``syndicate serve
   --processes N`` for N = 1 and 2 side by side, each beside nginx with N workers serving the same bytes
   from files; Redis commands per poll and per article (INFO commandstats, less the background jobs'
   idle rate); memory per 1,000 articles (as d) and the signed deliveries per second of one process (50
   subscribers). ``--write-docs`` writes its table into docs/scaling.md between
   ``<!-- scaling:start -->``/``<!-- scaling:end -->``.

``--only PART`` runs one part (repeatable), ``--skip PART`` leaves one out. ``--write-docs`` puts the
tables of the parts that ran into docs/benchmarks.md between ``<!-- bench:start -->``/``<!-- bench:end -->``
(a, b, c), ``<!-- memory:start -->``/``<!-- memory:end -->`` (d) and ``<!-- push:start -->``/
``<!-- push:end -->`` (e); without it they are only printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import http.client
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.articles.store import ArticleStore  # noqa: E402
from server.core import keys  # noqa: E402
from server.core.redis_connection import connect  # noqa: E402
from server.core.settings import Settings  # noqa: E402
from server.core.values import utc_now  # noqa: E402
from server.domain.articles import article_id_for_uri  # noqa: E402
from server.domain.feeds import load_feed_definitions  # noqa: E402
from server.domain.ninjs import parse_json_object, read_document  # noqa: E402
from server.feeds.builder import FeedBuilder, Representation  # noqa: E402
from server.feeds.render import (  # noqa: E402
    FeedView,
    ItemView,
    render_atom,
    render_json_feed,
    render_newsml_message,
    render_rss,
)
from server.feeds.render.memo import clear_all as clear_render_memos  # noqa: E402

SHARED_ARTICLES = ROOT.parent / "shared" / "fixtures" / "articles"
ARTICLES = SHARED_ARTICLES if SHARED_ARTICLES.exists() else ROOT / "examples"
SEED_V1 = ARTICLES / "serious-crime-convicts.v1.ninjs.json"
SEED_V2 = ARTICLES / "serious-crime-convicts.v2-correction.ninjs.json"
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"  # --write-docs puts the tables here

PUBLISHER_TOKEN = "bench-publisher-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
FEED_ITEMS = 50
FEED_EXTRA_PARAGRAPHS = 4  # paragraphs added to each feed article, for a ~250-300 KB Atom feed
FORMATS = (("atom", render_atom), ("rss", render_rss), ("json", render_json_feed),
           ("newsml", render_newsml_message))
RENDER_TARGET_MS = 25.0
THROUGHPUT_TARGET = 0.5
STALENESS_TARGET_MS = 50.0
HTTP_TIMEOUT = 10.0


# ----- processes --------------------------------------------------------------------------------

class Children:
    """Every process the benchmark starts, stopped (by its own handle) in reverse order at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self.procs)):
            self.stop(proc)


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != 6379:
            return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited with status {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not come up within {timeout:.0f} s")


def ensure_tools() -> tuple[str, str]:
    """nginx and wrk, installed from Debian when missing (apt-get update once, then install)."""
    def find() -> tuple[str | None, str | None]:
        nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
        return nginx, shutil.which("wrk")

    nginx, wrk = find()
    missing = [pkg for pkg, path in (("nginx", nginx), ("wrk", wrk)) if path is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"bench: {' and '.join(missing)} missing; install with: "
                             f"sudo apt-get install -y {' '.join(missing)}")
        print(f"installing Debian packages: {' '.join(missing)} ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive",
               "RUNLEVEL": "1"}  # invoke-rc.d then leaves the packaged nginx service stopped
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        nginx, wrk = find()
        if nginx is None or wrk is None:
            raise SystemExit("bench: nginx or wrk still missing after apt-get install")
    return nginx, wrk


def start_redis(children: Children, workdir: Path, name: str) -> int:
    port = free_port()
    data = workdir / name
    data.mkdir()
    proc = children.start(name, [
        shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(data), "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--logfile", str(data / "redis.log"),
    ], stdout=subprocess.DEVNULL)

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    wait_until(ping, 15, f"redis-server ({name})", proc)
    return port


def start_server(children: Children, workdir: Path, name: str, redis_port: int,
                 extra_env: dict[str, str] | None = None) -> tuple[int, subprocess.Popen]:
    port = free_port()
    data = workdir / name
    data.mkdir()
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SYNDICATE_PUBLISHER_TOKENS": f"bench:{PUBLISHER_TOKEN}",
        "SYNDICATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SYNDICATE_PORT": str(port),
        "SYNDICATE_DATA_DIR": str(data),
        "SYNDICATE_FEEDS_DIR": str(ROOT / "feeds"),
        "SYNDICATE_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed when the process ends
    proc = children.start(name, [sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: fetch(port, "GET", "/healthz")[0] == 200, 30, f"syndicate serve ({name})", proc)
    return port, proc


# ----- HTTP ---------------------------------------------------------------------------------------

class Client:
    """A keep-alive HTTP/1.1 connection to one local port."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        self.conn.close()


def fetch(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    client = Client(port)
    try:
        return client.request(method, path, headers, body)
    finally:
        client.close()


def publish(client: Client, document: dict[str, Any], signal_: str | None = None) -> dict[str, Any]:
    path = "/api/articles" + (f"?signal={signal_}" if signal_ else "")
    status, _headers, body = client.request(
        "POST", path, {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"},
        orjson.dumps(document))
    if status not in (200, 201):
        raise SystemExit(f"bench: POST /api/articles answered {status}: {body[:300]!r}")
    return orjson.loads(body)


def feed_credentials(port: int) -> tuple[dict[str, str], str]:
    """Headers a partner would send for /feeds/latest: a partner key made through the admin API
    (with the highest rate limit allowed, 1,000,000 a minute), else the admin token, else nothing (feeds still open)."""
    status, _h, body = fetch(port, "POST", "/api/partners", {
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        orjson.dumps({"name": "bench", "feeds": ["latest"], "formats": ["*"], "rate_limit": 1_000_000}))
    if status in (200, 201):
        key = orjson.loads(body).get("key")
        if key and fetch(port, "GET", "/feeds/latest/json", {"Authorization": f"Bearer {key}"})[0] == 200:
            return {"Authorization": f"Bearer {key}"}, "a partner key"
    if fetch(port, "GET", "/feeds/latest/json")[0] == 200:
        return {}, "no key (the feed is open)"
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "the admin token"


# ----- articles -------------------------------------------------------------------------------------

_PARAGRAPH = re.compile(r"<p>([^<]*)</p>")


def load_seed(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def make_document(seed: dict[str, Any], index: int, *, extra_paragraphs: int = 0) -> dict[str, Any]:
    """A distinct article from the seed: its own uri, headline and times, and each body paragraph's
    words shuffled (seeded by the index), so that feeds compress like different stories do rather
    than like 50 copies of one. ``extra_paragraphs`` appends that many more shuffled paragraphs."""
    document = copy.deepcopy(seed)
    rng = random.Random(index)
    document["uri"] = f"{seed['uri']}-bench-{index:04d}"
    document["headlines"][0]["value"] = f"{seed['headlines'][0]['value']} ({index})"
    shift = dt.timedelta(minutes=index)
    for field in ("firstCreated", "versionCreated"):
        document[field] = (dt.datetime.fromisoformat(seed[field]) + shift).isoformat()

    def shuffle(match: re.Match[str]) -> str:
        words = match.group(1).split()
        rng.shuffle(words)
        return "<p>" + " ".join(words) + "</p>"

    for body in document["bodies"]:
        if body.get("contentType") == "text/html":
            paragraphs = _PARAGRAPH.findall(body["value"])
            body["value"] = _PARAGRAPH.sub(shuffle, body["value"])
            for extra in range(extra_paragraphs):
                words = paragraphs[extra % len(paragraphs)].split()
                rng.shuffle(words)
                body["value"] += "\n<p>" + " ".join(words) + "</p>"
    return document


# ----- a. rendering -------------------------------------------------------------------------------

def median_ms(fn: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def bench_render(redis_port: int, article_ids: list[str], runs: int) -> dict[str, Any]:
    redis = await connect(f"redis://127.0.0.1:{redis_port}/0")
    try:
        feeds = load_feed_definitions(ROOT / "feeds")
        store = ArticleStore(redis, feeds)
        articles = await store.get_many(article_ids)
        cursor = await store.last_change_seq()
    finally:
        await redis.aclose()
    feed = feeds["latest"]
    builder = FeedBuilder(store, Settings.from_env({}))
    now = utc_now()
    views = [ItemView.from_revision(a.latest, builder.item_url(a.id)) for a in articles]
    feed_view = FeedView(
        name=feed.name, title=feed.title, description=feed.description, language=feed.language,
        self_url=builder.self_url(feed, "atom"), alternate_url=f"{builder.settings.base_url}/",
        hub_url=f"{builder.settings.base_url}/hub", built_at=max(v.ingested_at for v in views),
        render_id="bench")
    result: dict[str, Any] = {"items": len(views), "formats": {}}
    for name, renderer in FORMATS:
        body = renderer(feed_view, views)
        result["formats"][name] = {
            "bytes": len(body),
            "cold": median_ms(lambda r=renderer: r(feed_view, views), runs, clear_render_memos),
            "warm": median_ms(lambda r=renderer: r(feed_view, views), runs),
            "encode": median_ms(lambda b=body: Representation.encode("x", b, None), runs),
        }
        encoded = Representation.encode("x", body, None)
        result["formats"][name]["gzip_bytes"] = len(encoded.bodies["gzip"])
        result["formats"][name]["br_bytes"] = len(encoded.bodies["br"])

    def render_all(page: list) -> None:
        for fmt, _renderer in FORMATS:
            builder.render(feed, fmt, page, since=None, cursor=cursor, generation=1, now=now)

    changed = iter(range(1, 10_000))

    def one_changed() -> list:
        # A new revision of the newest article (a version never seen before), the 49 others as they were.
        first = articles[0]
        latest = dataclasses.replace(first.latest, version=first.latest.version + next(changed))
        return [dataclasses.replace(first, latest=latest), *articles[1:]]

    render_all(articles)
    result["page_cold"] = median_ms(lambda: render_all(articles), runs, clear_render_memos)
    render_all(articles)
    result["page_warm"] = median_ms(lambda: render_all(articles), runs)
    pages = [one_changed() for _ in range(runs)]
    render_all(articles)
    result["page_one_changed"] = median_ms(lambda: render_all(pages.pop()), runs)
    return result


# ----- b. throughput against nginx --------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/atom+xml;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/www;
        location / {{
            gzip off;
            gzip_static on;
            gzip_vary on;
            etag on;
            add_header Cache-Control "max-age=60";
        }}
    }}
}}
"""


def start_nginx(children: Children, nginx: str, workdir: Path, identity: bytes, gzipped: bytes,
                name: str = "nginx", workers: int = 1) -> int:
    """nginx with ``workers`` worker processes serving the feed's bytes from files (the ceiling)."""
    prefix = workdir / name
    workdir.chmod(0o755)  # nginx's worker runs as www-data when the benchmark runs as root
    (prefix / "www" / "feeds" / "latest").mkdir(parents=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True)
    (prefix / "www" / "feeds" / "latest" / "atom").write_bytes(identity)
    (prefix / "www" / "feeds" / "latest" / "atom.gz").write_bytes(gzipped)
    port = free_port()
    conf = prefix / "nginx.conf"
    text = NGINX_CONF.format(prefix=prefix, port=port)
    if workers > 1:
        text = text.replace("worker_processes 1;", f"worker_processes {workers};").replace(
            f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} reuseport;")
    conf.write_text(text)
    proc = children.start(name, [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: fetch(port, "GET", "/feeds/latest/atom")[0] == 200, 15, name, proc)
    return port


def run_wrk(wrk: str, port: int, path: str, headers: dict[str, str], seconds: float, threads: int,
            connections: int) -> tuple[float, int]:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if match is None:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    return float(match.group(1)), int(bad.group(1)) if bad else 0


def bench_throughput(children: Children, nginx: str, wrk: str, workdir: Path, server_port: int,
                     credentials: dict[str, str], rounds: int, seconds: float, threads: int,
                     connections: int) -> dict[str, Any]:
    path = "/feeds/latest/atom"
    status, head, identity = fetch(server_port, "GET", path, credentials)
    assert status == 200, status
    status, gz_head, gzipped = fetch(server_port, "GET", path, {**credentials, "Accept-Encoding": "gzip"})
    assert status == 200 and gz_head.get("content-encoding") == "gzip", (status, gz_head)
    nginx_port = start_nginx(children, nginx, workdir, identity, gzipped)
    n_status, n_head, n_identity = fetch(nginx_port, "GET", path)
    _s, n_gz_head, n_gzipped = fetch(nginx_port, "GET", path, {"Accept-Encoding": "gzip"})
    if n_identity != identity or n_gzipped != gzipped or n_gz_head.get("content-encoding") != "gzip":
        raise SystemExit("bench: nginx does not serve the same bytes as the server")
    server_etag, nginx_etag = head["etag"], n_head["etag"]
    for port, etag, extra in ((server_port, server_etag, credentials), (nginx_port, nginx_etag, {})):
        if fetch(port, "GET", path, {**extra, "If-None-Match": etag})[0] != 304:
            raise SystemExit(f"bench: no 304 from port {port} for If-None-Match {etag}")
    cases = {
        "identity": ({**credentials}, {}),
        "gzip": ({**credentials, "Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip"}),
        "304": ({**credentials, "If-None-Match": server_etag}, {"If-None-Match": nginx_etag}),
    }
    # Warm both (connections, caches, the CPU's frequency) before anything is counted.
    run_wrk(wrk, server_port, path, cases["identity"][0], 1, threads, connections)
    run_wrk(wrk, nginx_port, path, cases["identity"][1], 1, threads, connections)
    samples: dict[str, dict[str, list[float]]] = {c: {"server": [], "nginx": []} for c in cases}
    errors = 0
    for _round in range(rounds):
        for case, (server_headers, nginx_headers) in cases.items():
            for side, port, headers in (("server", server_port, server_headers), ("nginx", nginx_port, nginx_headers)):
                rate, bad = run_wrk(wrk, port, path, headers, seconds, threads, connections)
                samples[case][side].append(rate)
                errors += bad
    result = {"bytes": {"identity": len(identity), "gzip": len(gzipped)}, "errors": errors, "cases": {}}
    for case, sides in samples.items():
        server_rate, nginx_rate = statistics.median(sides["server"]), statistics.median(sides["nginx"])
        result["cases"][case] = {"server": server_rate, "nginx": nginx_rate, "ratio": server_rate / nginx_rate,
                                 "samples": sides}
    for name, proc in list(children.procs):
        if name == "nginx":
            children.stop(proc)
    return result


# ----- c. staleness -----------------------------------------------------------------------------------

def bench_staleness(port_a: int, port_b: int, credentials: dict[str, str], seed: dict[str, Any],
                    revisions: int) -> dict[str, Any]:
    a, b = Client(port_a), Client(port_b)
    path = "/feeds/latest/json"
    document = make_document(seed, 0)
    base = dt.datetime.fromisoformat(document["versionCreated"]) + dt.timedelta(days=1)
    status, headers, _ = b.request("GET", path, credentials)
    assert status == 200, status
    etag = headers["etag"]
    delays, polls, timeouts = [], [], 0
    for k in range(revisions):
        marker = f"bench staleness probe {k}"
        document["headlines"][0]["value"] = marker
        document["versionCreated"] = (base + dt.timedelta(minutes=k)).isoformat()
        publish(a, document, "update")
        acknowledged = time.perf_counter()
        deadline = acknowledged + 5.0
        count = 0
        while time.perf_counter() < deadline:
            count += 1
            status, headers, body = b.request("GET", path, {**credentials, "If-None-Match": etag})
            if status == 200:
                etag = headers["etag"]
                if marker.encode() in body:
                    delays.append((time.perf_counter() - acknowledged) * 1000)
                    polls.append(count)
                    break
        else:
            timeouts += 1
        time.sleep(0.02)  # let both processes settle before the next revision
    a.close()
    b.close()
    delays.sort()
    p95 = delays[min(len(delays) - 1, int(round(0.95 * (len(delays) - 1))))] if delays else float("nan")
    return {"revisions": revisions, "seen": len(delays), "timeouts": timeouts,
            "median": statistics.median(delays) if delays else float("nan"), "p95": p95,
            "max": max(delays) if delays else float("nan"),
            "polls": statistics.median(polls) if polls else 0}


# ----- d. memory ------------------------------------------------------------------------------------

async def import_articles(redis_port: int, documents: list[tuple[dict[str, Any], str | None]]) -> dict[str, int]:
    redis = await connect(f"redis://127.0.0.1:{redis_port}/0")
    try:
        store = ArticleStore(redis, load_feed_definitions(ROOT / "feeds"))
        before = await redis.info("memory")
        for document, signal_ in documents:
            incoming = read_document(parse_json_object(orjson.dumps(document)))
            await store.ingest(incoming, "bench", signal=signal_)
        after = await redis.info("memory")
        keys = await redis.dbsize()
    finally:
        await redis.aclose()
    return {"before": before["used_memory"], "after": after["used_memory"], "keys": keys}


def bench_memory(children: Children, workdir: Path, count: int) -> dict[str, Any]:
    seed_v1, seed_v2 = load_seed(SEED_V1), load_seed(SEED_V2)
    singles = [(make_document(seed_v1, i), None) for i in range(count)]
    results = {}
    port = start_redis(children, workdir, "redis-memory-1")
    results["one"] = asyncio.run(import_articles(port, singles))
    port = start_redis(children, workdir, "redis-memory-2")
    revised = [(make_document(seed_v2, i), "correction") for i in range(count)]
    results["two"] = asyncio.run(import_articles(port, singles + revised))
    for name, proc in list(children.procs):
        if name.startswith("redis-memory"):
            children.stop(proc)
    results["count"] = count
    results["document_bytes"] = statistics.mean(len(orjson.dumps(d)) for d, _ in singles)
    return results


# ----- e. push ----------------------------------------------------------------------------------------

PUSH_SECRET = "bench-websub-secret-0123456789"
PUSH_TOPIC_FEED = "headlines"  # a public feed: subscribers need no key
PUSH_P99_TARGET_MS = 1000.0
PUSH_WAIT_SECONDS = 30.0  # longest wait for one fan-out to reach every subscriber


def run_push_subscriber(config: dict[str, Any]) -> int:
    """The helper process: ``ports`` aiohttp sites on 127.0.0.1 serving ``/cb/<i>`` callbacks. GET answers
    WebSub verification (echoes ``hub.challenge``); POST checks ``X-Hub-Signature`` and records
    (subscriber, ``X-Syndicate-Delivery``, ``time.time()``, signature ok). ``/_wait``, ``/_arrivals`` and
    ``/_reset`` (on every port) let the benchmark read what arrived. Stops on SIGTERM."""
    import hashlib
    import hmac

    from aiohttp import web

    secret = config["secret"].encode()
    arrivals: list[tuple[int, str, float, bool]] = []
    grew = asyncio.Event()

    async def callback(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(text=request.query.get("hub.challenge", ""))
        body = await request.read()
        arrived = time.time()
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, request.headers.get("X-Hub-Signature", ""))
        arrivals.append((int(request.match_info["i"]), request.headers.get("X-Syndicate-Delivery", ""),
                         arrived, signed))
        grew.set()
        return web.Response(status=204)

    async def wait(request: web.Request) -> web.Response:
        count, deadline = int(request.query["count"]), time.monotonic() + float(request.query["timeout"])
        while len(arrivals) < count and time.monotonic() < deadline:
            grew.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(grew.wait(), timeout=max(0.0, deadline - time.monotonic()))
        return web.json_response({"count": len(arrivals)})

    async def dump(_request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(arrivals), content_type="application/json")

    async def reset(_request: web.Request) -> web.Response:
        arrivals.clear()
        return web.json_response({"count": 0})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/cb/{i:[0-9]+}", callback)
        app.router.add_get("/_wait", wait)
        app.router.add_get("/_arrivals", dump)
        app.router.add_post("/_reset", reset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        ports = []
        for _ in range(config["ports"]):
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # noqa: SLF001 - the port bound
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        ready = Path(config["ready_file"])
        ready.with_suffix(".tmp").write_bytes(orjson.dumps(ports))
        ready.with_suffix(".tmp").rename(ready)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    return 0


def start_push_subscriber(children: Children, workdir: Path, ports: int) -> tuple[list[int], subprocess.Popen]:
    ready = workdir / "subscriber-ports.json"
    config = {"ports": ports, "secret": PUSH_SECRET, "ready_file": str(ready)}
    log = open(workdir / "subscriber.log", "wb")  # noqa: SIM115 - closed when the process ends
    proc = children.start("push-subscriber", [sys.executable, str(Path(__file__).resolve()),
                                              "--push-subscriber-helper", orjson.dumps(config).decode()],
                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wait_until(ready.exists, 30, "the push subscriber helper", proc)
    return orjson.loads(ready.read_bytes()), proc


def helper_call(port: int, method: str, path: str) -> Any:
    client = Client(port)
    client.conn.timeout = PUSH_WAIT_SECONDS + 10
    try:
        status, _headers, body = client.request(method, path)
    finally:
        client.close()
    if status != 200:
        raise SystemExit(f"bench: the subscriber helper answered {status} to {path}")
    return orjson.loads(body)


def bench_push_fanout(children: Children, workdir: Path, subscribers: int, articles: int,
                      helper_ports: list[int], seed: dict[str, Any], tag: str) -> dict[str, Any]:
    """One server (in-process push worker, default settings) on a fresh Redis; ``subscribers`` WebSub
    subscriptions (with ``hub.secret``) to the public headlines feed, spread over the helper's ports;
    ``articles`` articles published one after another, each once the previous one reached everybody."""
    import redis as redis_sync

    from server.push.destinations import subscription_id
    from server.push.payloads import delivery_id

    redis_port = start_redis(children, workdir, f"redis-push-{tag}")
    port, server = start_server(children, workdir, f"server-push-{tag}", redis_port,
                                {"SYNDICATE_PUSH_ALLOW_NETWORKS": "127.0.0.0/8"})
    control = helper_ports[0]
    helper_call(control, "POST", "/_reset")
    topic = f"http://127.0.0.1:{port}/feeds/{PUSH_TOPIC_FEED}/atom"
    callbacks = [f"http://127.0.0.1:{helper_ports[i % len(helper_ports)]}/cb/{i}" for i in range(subscribers)]
    client = Client(port)
    started = time.monotonic()
    for callback in callbacks:
        form = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback,
                                       "hub.secret": PUSH_SECRET, "hub.lease_seconds": "3600"})
        status, _h, body = client.request("POST", "/hub", {"Content-Type": "application/x-www-form-urlencoded"},
                                          form.encode())
        if status != 202:
            raise SystemExit(f"bench: POST /hub answered {status}: {body[:300]!r}")
    with redis_sync.Redis(host="127.0.0.1", port=redis_port) as redis:
        try:
            wait_until(lambda: redis.scard("syn:destinations") >= subscribers, 120,
                       f"verification of {subscribers} subscriptions", server)
        except SystemExit as exc:
            log = (workdir / f"server-push-{tag}" / "server.log").read_text(errors="replace")
            raise SystemExit(f"{exc} ({redis.scard('syn:destinations')} verified); the server's log ends:\n"
                             f"{log[-2000:]}") from None
    subscribe_seconds = time.monotonic() - started
    calls_before, calls_at = redis_calls(redis_port), time.monotonic()

    pairs: dict[str, tuple[int, int]] = {}  # delivery id -> (subscriber, article)
    published: list[float] = []  # time.time() when each publishing call returned
    first_call = time.time()
    for k in range(articles):
        document = make_document(seed, 5000 + 10 * subscribers + k)
        document["headlines"][0]["value"] = f"Push benchmark {subscribers}/{k}"
        article_id = article_id_for_uri(document["uri"])
        for i, callback in enumerate(callbacks):
            pairs[delivery_id(subscription_id(callback, topic), article_id, 1)] = (i, k)
        result = publish(client, document)
        published.append(time.time())
        assert result["version"] == 1, result
        helper_call(control, "GET", f"/_wait?count={subscribers * (k + 1)}&timeout={PUSH_WAIT_SECONDS}")
    client.close()
    arrivals = helper_call(control, "GET", "/_arrivals")
    time.sleep(0.5)  # the last acknowledgements' receipts
    calls = redis_calls(redis_port) - calls_before
    calls_seconds = time.monotonic() - calls_at
    children.stop(server)
    for name, proc in list(children.procs):
        if name == f"redis-push-{tag}":
            children.stop(proc)

    first: dict[tuple[int, int], float] = {}
    unknown = duplicates = unsigned = 0
    for subscriber, delivery, arrived, signed in arrivals:
        unsigned += not signed
        pair = pairs.get(delivery)
        if pair is None or pair[0] != subscriber:
            unknown += 1
        elif pair in first:
            duplicates += 1
        else:
            first[pair] = arrived
    latencies = sorted((arrived - published[k]) * 1000 for (_i, k), arrived in first.items())
    last_reached = [max((t - published[k]) * 1000 for (_i, kk), t in first.items() if kk == k)
                    for k in range(articles) if any(kk == k for _i, kk in first)]
    span = (max(first.values()) - first_call) if first else float("nan")
    return {"subscribers": subscribers, "articles": articles, "expected": subscribers * articles,
            "received": len(first), "duplicates": duplicates, "unknown": unknown, "unsigned": unsigned,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else float("nan"),
            "last": statistics.median(last_reached) if last_reached else float("nan"),
            "rate": len(arrivals) / span if first else 0.0, "subscribe_seconds": subscribe_seconds,
            "commands": calls, "commands_seconds": calls_seconds}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def bench_push(children: Children, workdir: Path, counts: list[int], ports: int, rounds: int) -> dict[str, Any]:
    """Each subscriber count ``rounds`` times (a fresh Redis and server each time); the round with the
    median p99 is reported, with the range of p99 over the rounds."""
    seed = load_seed(SEED_V1)
    helper_ports, helper = start_push_subscriber(children, workdir, ports)
    runs = []
    for count in counts:
        articles = 5 if count <= 100 else 3
        measured = []
        for round_ in range(rounds):
            print(f"   {count} subscriber(s), {articles} articles, round {round_ + 1} of {rounds} ...",
                  file=sys.stderr)
            tag = f"{count}-{round_}"
            try:
                measured.append(bench_push_fanout(children, workdir, count, articles, helper_ports, seed, tag))
            except SystemExit as exc:  # one size failing does not lose the others' figures
                log = workdir / f"server-push-{tag}" / "server.log"
                errors = [line for line in log.read_text(errors="replace").splitlines()
                          if '"level":"ERROR"' in line or " ERROR " in line] if log.exists() else []
                print(f"bench: push with {count} subscribers failed: {exc}", file=sys.stderr)
                for line in errors[:3]:
                    print(f"   server: {line[:1500]}", file=sys.stderr)
                for name, proc in list(children.procs):
                    if name.endswith(f"-push-{tag}"):
                        children.stop(proc)
                runs.append({"subscribers": count, "articles": articles, "error": str(exc).splitlines()[0][:200],
                             "server_errors": len(errors)})
                break
        else:
            measured.sort(key=lambda r: r["p99"])
            run = measured[len(measured) // 2]
            run["p99_range"] = (measured[0]["p99"], measured[-1]["p99"])
            run["rounds"] = len(measured)
            runs.append(run)
    children.stop(helper)
    return {"ports": len(helper_ports), "runs": runs}


def push_report(push: dict[str, Any], load: str) -> str:
    lines = [
        f"Measured {dt.date.today().isoformat()} on {machine()}; load average before the run: {load}. "
        "One `syndicate serve` (push worker in process, default push settings) on its own Redis; "
        f"the subscribers are callbacks in one helper process (aiohttp, {push['ports']} port(s) on "
        "127.0.0.1), subscribed with `hub.secret` to the public `/feeds/headlines/atom` and checking "
        "every `X-Hub-Signature`. Articles are published one after another, each once the previous one "
        "has reached every subscriber; latency runs from the publishing call's answer to a "
        "subscriber's arrival (`time.time()` in both processes). Each size ran in several rounds, each "
        "on a fresh Redis and server; the row is the round with the median p99.",
        "",
        "| Subscribers | articles | deliveries received | p50 | p99 | max | last subscriber reached (median) "
        "| signed deliveries/s | p99 over the rounds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in push["runs"]:
        if "error" in run:
            lines.append(f"| {run['subscribers']:,} | {run['articles']} | failed: {run['error']} "
                         f"({run['server_errors']} errors in the server's log) | | | | | | |")
            continue
        lines.append(
            f"| {run['subscribers']:,} | {run['articles']} | {run['received']:,} of {run['expected']:,} | "
            f"{run['p50']:.0f} ms | {run['p99']:.0f} ms | {run['max']:.0f} ms | {run['last']:.0f} ms | "
            f"{run['rate']:,.0f} | {run['p99_range'][0]:,.0f} to {run['p99_range'][1]:,.0f} ms "
            f"({run['rounds']} rounds) |")
    measured = [r for r in push["runs"] if "error" not in r]
    problems = [f"{r['subscribers']} subscribers: {r['expected'] - r['received']} missing after "
                f"{PUSH_WAIT_SECONDS:.0f} s, {r['duplicates']} duplicates, {r['unknown']} unexpected, "
                f"{r['unsigned']} badly signed" for r in measured
                if r["received"] < r["expected"] or r["duplicates"] or r["unknown"] or r["unsigned"]]
    biggest = max(push["runs"], key=lambda r: r["subscribers"])
    ok = "error" not in biggest and biggest["received"] == biggest["expected"] and biggest["p99"] < PUSH_P99_TARGET_MS
    p99 = "failed" if "error" in biggest else f"{biggest['p99']:.0f} ms"
    lines += [
        "",
        f"Push target (p99 under {PUSH_P99_TARGET_MS / 1000:.0f} s with {biggest['subscribers']:,} subscribers): "
        f"p99 {p99}, {verdict(ok)}. For reference, Flask-WebSub's hub reaches the last of "
        "1,000 subscribers after 1.7 to 2.2 s and delivers 450 to 600 signed notifications a second on this "
        "machine. Signed deliveries/s is every POST received over the time from the first publishing call "
        "to the last arrival. " + ("; ".join(problems) + "." if problems else
                                   "Every delivery arrived once, correctly signed."),
    ]
    return "\n".join(lines)


# ----- report ---------------------------------------------------------------------------------------

def machine() -> str:
    redis_version = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"],
                                   capture_output=True, text=True).stdout.split("v=")[1].split()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, Redis {redis_version}, "
            f"{platform.system()} {platform.release()}")


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(args: argparse.Namespace, render: dict[str, Any], throughput: dict[str, Any] | None,
           staleness: dict[str, Any] | None, feed_bytes: int, credentials_note: str, load: str) -> str:
    today = dt.date.today().isoformat()
    lines = [
        f"Measured {today} on {machine()}; load average before the run: {load}. "
        f"Feed: {render['items']} articles made from the seed, `/feeds/latest/atom` = {feed_bytes / 1000:.0f} KB.",
        "",
        f"| Rendering, 50-item page (median of {args.runs} runs) | memo empty (cold) | memo filled (warm) | bytes |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, data in render["formats"].items():
        function = {"json": "render_json_feed", "newsml": "render_newsml_message"}.get(name, f"render_{name}")
        lines.append(f"| `{function}` | {data['cold']:.1f} ms | "
                     f"{data['warm']:.1f} ms | {data['bytes'] / 1000:.0f} KB |")
    for name, data in render["formats"].items():
        lines.append(f"| gzip + brotli + ETags of the {name} body | {data['encode']:.1f} ms | "
                     f"{data['encode']:.1f} ms | gzip {data['gzip_bytes'] / 1000:.0f} KB, "
                     f"br {data['br_bytes'] / 1000:.0f} KB |")
    lines += [
        f"| **`FeedBuilder.render`, all four formats, encoded** | **{render['page_cold']:.1f} ms** | "
        f"**{render['page_warm']:.1f} ms** | |",
        f"| the same after one of the 50 articles changed (a re-render) | | "
        f"**{render['page_one_changed']:.1f} ms** | |",
        "",
    ]
    cold_ok = render["page_cold"] < RENDER_TARGET_MS
    lines.append(
        f"Render target (all four formats with their encodings under {RENDER_TARGET_MS:.0f} ms): "
        f"re-render after a change {render['page_one_changed']:.1f} ms, {verdict(render['page_one_changed'] < RENDER_TARGET_MS)}; "
        f"cold (first render in a process, nothing memoised) {render['page_cold']:.1f} ms, {verdict(cold_ok)}.")
    if throughput is not None:
        lines += [
            "",
            f"| Cached `GET /feeds/latest/atom` (wrk -t{args.threads} -c{args.connections}, "
            f"median of {args.rounds} x {args.duration:g} s) | syndicate (1 process) | nginx (1 worker) | ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        labels = {"identity": f"200, identity ({throughput['bytes']['identity'] / 1000:.0f} KB)",
                  "gzip": f"200, `Accept-Encoding: gzip` ({throughput['bytes']['gzip'] / 1000:.0f} KB)",
                  "304": "304 to `If-None-Match`"}
        for case, data in throughput["cases"].items():
            lines.append(f"| {labels[case]} | {data['server']:,.0f} req/s | {data['nginx']:,.0f} req/s | "
                         f"{data['ratio']:.2f}x |")
        ok = all(d["ratio"] >= THROUGHPUT_TARGET for c, d in throughput["cases"].items() if c != "304")
        lines += ["", f"Throughput target (cached GET at least {THROUGHPUT_TARGET}x nginx): "
                      f"identity {throughput['cases']['identity']['ratio']:.2f}x, "
                      f"gzip {throughput['cases']['gzip']['ratio']:.2f}x, {verdict(ok)} "
                      f"(304s: {throughput['cases']['304']['ratio']:.2f}x). The server was called with "
                      f"{credentials_note}; non-2xx/3xx answers during the runs: {throughput['errors']}."]
    if staleness is not None:
        lines += [
            "",
            "| Cross-process staleness (revision posted to A, polled on B) | median | p95 | max |",
            "| --- | ---: | ---: | ---: |",
            f"| {staleness['seen']} of {staleness['revisions']} revisions, `/feeds/latest/json` | "
            f"{staleness['median']:.1f} ms | {staleness['p95']:.1f} ms | {staleness['max']:.1f} ms |",
            "",
            f"Staleness target (under {STALENESS_TARGET_MS:.0f} ms): "
            f"{verdict(staleness['timeouts'] == 0 and staleness['p95'] < STALENESS_TARGET_MS)} "
            f"(p95 {staleness['p95']:.1f} ms; revisions not seen within 5 s: {staleness['timeouts']}).",
        ]
    return "\n".join(lines)


def memory_report(memory: dict[str, Any]) -> str:
    count = memory["count"]
    per = 1000 / count
    one = (memory["one"]["after"] - memory["one"]["before"]) * per
    two = (memory["two"]["after"] - memory["two"]["before"]) * per
    return "\n".join([
        f"Measured {dt.date.today().isoformat()} on {machine()}, with `scripts/bench.py`: Redis "
        f"`used_memory` (INFO memory) before and after importing {count:,} articles into an empty Redis "
        f"through the store (documents of {memory['document_bytes'] / 1000:.1f} KB of JSON each, made "
        "from the seed article), scaled to 1,000 articles.",
        "",
        "| 1,000 articles | Redis memory |",
        "| --- | ---: |",
        f"| one revision each | {one / 1e6:.1f} MB ({one / 1000 / 1000:.1f} KB per article) |",
        f"| two revisions each (the second a correction) | {two / 1e6:.1f} MB ({two / 1000 / 1000:.1f} KB per article) |",
        "",
        "This is everything the store keeps: revision records with their documents, the article hashes, "
        "the indexes and the change log; rendered feeds (cache keys with a TTL) are not included. "
        "A superseded revision keeps its body for `SYNDICATE_RETENTION_DAYS` (90 days by default); after "
        "that only its metadata stays, so an old article costs about what a single revision does.",
    ])


def bench_storm(workdir: Path, partners: int, articles: int, seed: int) -> Any:
    """The storm of ``tests/storm.py``, scaled up: its own processes (stopped by the harness)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from storm import StormConfig, run_storm

    # Publishing is spread so that the writes come at about the rate of the test's storm per second of
    # window, over a longer window; quiescence gets more slack for the larger push backlog.
    config = StormConfig(partners=partners, articles=articles, seed=seed,
                         publish_seconds=max(30.0, articles * 0.12), writers=12, poll_interval=1.0,
                         quiet_seconds=45.0, quiesce_timeout=600.0)
    return asyncio.run(run_storm(config, workdir / "storm"))


def storm_report(storm: Any, load: str) -> str:
    verdicts = [("0 acknowledged revisions lost", not storm.lost),
                ("0 revisions stored twice", not storm.duplicates),
                ("0 entitled partners stale", not storm.stale),
                ("propagation report equals the partners' logs", not storm.mismatches),
                ("0 revisions re-sent after a 2xx", not storm.repeats_after_2xx),
                ("0 older-after-newer", not storm.older_after_newer)]
    return "\n".join([
        f"Measured {dt.date.today().isoformat()} on {machine()} (load before: {load}), with `scripts/bench.py` "
        "(the storm of `tests/storm.py`):",
        "",
        "```",
        storm.summary(),
        "```",
        "",
        *(f"- {name}: {verdict(ok)}" for name, ok in verdicts),
    ])


def write_between(path: Path, start: str, end: str, content: str) -> None:
    text = path.read_text()
    # The markers on lines of their own: prose that mentions a marker is left alone.
    pattern = re.compile(r"^" + re.escape(start) + r"$.*?^" + re.escape(end) + r"$", re.S | re.M)
    if not pattern.search(text):
        raise SystemExit(f"bench: {path.name} has no {start} ... {end} markers")
    path.write_text(pattern.sub(lambda _m: f"{start}\n{content}\n{end}", text, count=1))


# ----- main -----------------------------------------------------------------------------------------

# ----- f. ops views at 1,000 partners -------------------------------------------------------------

OPS_DESKS = 10  # bench feeds, one per desk (slugline prefix); each partner reads one
OPS_STATUS_TARGET_MS = 100.0
OPS_DASHBOARD_TARGET_MS = 300.0
OPS_DASHBOARD_TARGET_KB = 300.0
OPS_METRICS_TARGET_MS = 100.0


def ops_feeds_dir(workdir: Path) -> Path:
    folder = workdir / "ops-feeds"
    folder.mkdir()
    for desk in range(OPS_DESKS):
        (folder / f"desk-{desk}.toml").write_text(
            f'title = "Desk {desk}"\ndescription = "Desk {desk}"\n\n[filters]\nslugline_prefix = "desk-{desk}-"\n')
    return folder


async def seed_ops(redis_port: int, feeds_dir: Path, partners: int, changes: int, correction_share: float,
                   received_share: float) -> dict[str, Any]:
    """Partners, articles, corrections, receipts and requirements written straight through the stores
    (as the server would have, without HTTP): ``changes`` change-log entries in the window, of which
    ``correction_share`` corrections; each partner has received v1 of every article of its desk and
    ``received_share`` of the corrections."""
    from server.partners.ledger import PollLedger
    from server.partners.propagation import Requirements
    from server.partners.store import PartnerStore
    from server.push.destinations import DestinationStore, new_webhook
    from server.push.payloads import delivery_id
    from server.push.queue import PushQueue

    redis = await connect(f"redis://127.0.0.1:{redis_port}/0")
    feeds = load_feed_definitions(feeds_dir)
    store = ArticleStore(redis, feeds)
    partner_store = PartnerStore(redis, feeds)
    rng = random.Random(11)
    started = time.monotonic()
    for n in range(partners):
        await partner_store.create(f"p{n:04d}", [f"desk-{n % OPS_DESKS}"], ["atom", "json"])
    everyone = (await partner_store.load_all())[0]
    seed = load_seed(SEED_V1)
    corrections = int(changes * correction_share)
    new = changes - corrections
    ids = []
    for index in range(new):
        document = make_document(seed, index)
        document["slugline"] = f"desk-{index % OPS_DESKS}-{index}"
        await store.ingest(read_document(document), "bench")
        ids.append((article_id_for_uri(document["uri"]), index % OPS_DESKS))
    ledger = PollLedger(redis)
    for n, partner in enumerate(everyone):  # v1 of every article of its desk, by poll
        desk = int(partner.feeds[0].split("-")[1])
        manifest = tuple((a, 1) for a, d in ids if d == desk)
        ledger.record(partner.name, None, partner.feeds[0], "atom", 200, 1000, f"bench-v1-{desk}", manifest)
        if n % 25 == 24:  # one flush is one pipeline: keep each within the socket timeout
            await ledger.flush()
    await ledger.flush()
    requirements = Requirements(redis)
    corrected = rng.sample(range(new), corrections)
    for index in corrected:
        document = make_document(seed, index)
        document["slugline"] = f"desk-{index % OPS_DESKS}-{index}"
        document["headlines"] = [{"role": "main", "value": f"Corrected {index}"}]
        document["versionCreated"] = "2031-01-01T00:00:00Z"
        result = await store.ingest(read_document(document), "bench", signal="correction")
        await requirements.record(store, result.article, everyone, feeds.values())
    for n, partner in enumerate(everyone):  # most corrections have been received since
        desk = int(partner.feeds[0].split("-")[1])
        got = tuple((ids[i][0], 2) for i in corrected if ids[i][1] == desk and rng.random() < received_share)
        ledger.record(partner.name, None, partner.feeds[0], "atom", 200, 1000, f"bench-v2-{partner.name}", got)
        if n % 25 == 24:
            await ledger.flush()
    await ledger.flush()
    await redis.set("syn:propagation:caught-up", await redis.get("syn:changelog:seq") or 0)
    # The receipts above arrived at once; in service they trickle in and each read (or the retention
    # job) settles what came since the last: settle them now, as the retention job would have.
    await requirements.settle_receipts()
    # One dead endpoint with 600 deliveries given up on (the dashboard groups them into one row).
    hook = await DestinationStore(redis).save(new_webhook(everyone[0].name, "https://dead.example/in", "ninjs",
                                                          "s" * 32))
    queue = PushQueue(redis)
    for article_id, _desk in ids[:600]:
        await queue.enqueue([hook.id], article_id, 1)
        [claim] = await queue.claim(1, 60_000)  # given up on after an attempt, as the deliverer does
        await queue.give_up(claim, 1, {
            "delivery": delivery_id(hook.id, article_id, 1), "kind": "webhook", "destination": hook.id,
            "partner": everyone[0].name, "url": hook.url, "article": article_id, "version": 1, "attempts": 9,
            "firstAttemptAt": "2026-01-01T00:00:00Z", "lastAttemptAt": "2026-01-01T01:00:00Z",
            "lastStatus": 503, "lastError": "HTTP 503"})
    pairs = sum([await redis.zcard(f"syn:partner:{p.name}:outstanding") for p in everyone])
    memory = (await redis.info("memory"))["used_memory"]
    await redis.aclose()
    return {"partners": partners, "changes": changes, "corrections": corrections, "outstanding_pairs": pairs,
            "seed_seconds": time.monotonic() - started, "redis_mb": memory / 1e6}


def bench_ops(children: Children, workdir: Path, partners: int, changes: int, runs: int) -> dict[str, Any]:
    redis_port = start_redis(children, workdir, "redis-ops")
    feeds_dir = ops_feeds_dir(workdir)
    seeded = asyncio.run(seed_ops(redis_port, feeds_dir, partners, changes, 0.3, 0.9))
    port, _proc = start_server(children, workdir, "server-ops", redis_port,
                               {"SYNDICATE_FEEDS_DIR": str(feeds_dir)})
    # Steady state: the start-up maintenance (index rebuilds, receipts past retention over 1,000
    # partners) holds Redis for seconds, as it does hourly; the views are measured after it.
    maintenance = redis_sync.Redis(port=redis_port)
    with contextlib.suppress(SystemExit):  # it may have begun and ended before this looks
        wait_until(lambda: bool(maintenance.exists(keys.maintenance_lock())), 10, "the start-up maintenance", _proc)
    wait_until(lambda: not maintenance.exists(keys.maintenance_lock()), 120, "the start-up maintenance", _proc)
    maintenance.close()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    client = Client(port)
    status, headers, _body = client.request("POST", "/ops/login", {"Content-Type": "application/x-www-form-urlencoded"},
                                            urllib.parse.urlencode({"token": ADMIN_TOKEN}).encode())
    cookie = headers.get("set-cookie", "").split(";")[0]
    if status != 303 or not cookie:
        raise SystemExit(f"bench: /ops/login answered {status}")

    def timed(path: str, headers: dict[str, str], n: int) -> tuple[list[float], int]:
        client.request("GET", path, headers)  # warm: the first read settles the pending sets
        times, size = [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            code, _h, body = client.request("GET", path, headers)
            times.append((time.perf_counter() - t0) * 1000)
            if code != 200:
                raise SystemExit(f"bench: GET {path} answered {code}")
            size = len(body)
        return times, size

    status_ms, status_size = timed("/api/status", admin, runs)
    dashboard_ms, dashboard_size = timed("/ops", {"Cookie": cookie}, max(5, runs // 3))
    metrics_ms, _ = timed("/metrics", admin, runs)
    propagation_ms, _ = timed("/api/propagation", admin, max(5, runs // 3))
    client.close()
    return {**seeded, "status_p95": percentile(sorted(status_ms), 95), "status_p50": statistics.median(status_ms),
            "status_kb": status_size / 1000, "dashboard_p95": percentile(sorted(dashboard_ms), 95),
            "dashboard_kb": dashboard_size / 1000, "metrics_p95": percentile(sorted(metrics_ms), 95),
            "propagation_p95": percentile(sorted(propagation_ms), 95), "runs": runs}


def ops_report(result: dict[str, Any], load: str) -> str:
    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    rows = [
        ("`GET /api/status` p95", f"{result['status_p95']:.0f} ms (p50 {result['status_p50']:.0f} ms, "
         f"{result['status_kb']:.0f} KB)", f"< {OPS_STATUS_TARGET_MS:.0f} ms",
         mark(result["status_p95"] < OPS_STATUS_TARGET_MS)),
        ("`GET /ops` (dashboard) p95", f"{result['dashboard_p95']:.0f} ms, {result['dashboard_kb']:.0f} KB",
         f"< {OPS_DASHBOARD_TARGET_MS:.0f} ms and < {OPS_DASHBOARD_TARGET_KB:.0f} KB",
         mark(result["dashboard_p95"] < OPS_DASHBOARD_TARGET_MS and result["dashboard_kb"] < OPS_DASHBOARD_TARGET_KB)),
        ("`GET /metrics` p95", f"{result['metrics_p95']:.0f} ms", f"< {OPS_METRICS_TARGET_MS:.0f} ms",
         mark(result["metrics_p95"] < OPS_METRICS_TARGET_MS)),
        ("`GET /api/propagation` p95 (first page)", f"{result['propagation_p95']:.0f} ms", "", ""),
    ]
    lines = [f"**Ops views** ({result['partners']:,} partners, {result['changes']:,} changes in the window of "
             f"which {result['corrections']:,} corrections, {result['outstanding_pairs']:,} (partner, article) "
             f"pairs outstanding, 600 failed deliveries to one endpoint; {result['runs']} runs after one warm-up; "
             f"seeded through the stores in {result['seed_seconds']:.0f} s, Redis {result['redis_mb']:.0f} MB; "
             f"load {load}):", "", "| View | Measured | Target | |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


# ----- h. scaling: 1 and 2 processes per host -----------------------------------------------------------

SCALING_PROCESSES = (1, 2)
SCALING_INGEST_CONNECTIONS = 16
SCALING_PUSH_SUBSCRIBERS = 50  # under the hub's 60 subscription requests a minute per address
SCALING_PUSH_ARTICLES = 20
SCALING_DOC = ROOT / "docs" / "scaling.md"
INGEST_LUA = """\
-- Each request a new article: the template's __N__ becomes <run>-<thread>-<counter>.
local made = 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
end
local counter, prefix, template = 0, "", ""
function init(args)
  prefix = args[1] .. "-" .. tostring(tid)
  local handle = io.open(args[2], "r")
  template = handle:read("*a")
  handle:close()
end
function request()
  counter = counter + 1
  local body = template:gsub("__N__", prefix .. "-" .. counter)
  return wrk.format("POST", "/api/articles", {["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer " .. args_token}, body)
end
"""


def start_processes(children: Children, workdir: Path, name: str, redis_port: int, processes: int) -> tuple[int, Any]:
    """``syndicate serve --processes N`` on a fresh port, once every child answers /readyz."""
    port = free_port()
    data = workdir / name
    data.mkdir()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "SYNDICATE_PUBLISHER_TOKENS": f"bench:{PUBLISHER_TOKEN}", "SYNDICATE_ADMIN_TOKEN": ADMIN_TOKEN,
           "SYNDICATE_PORT": str(port), "SYNDICATE_DATA_DIR": str(data), "SYNDICATE_FEEDS_DIR": str(ROOT / "feeds"),
           "SYNDICATE_LOG_LEVEL": "WARNING"}
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed when the process ends
    proc = children.start(name, [sys.executable, "-m", "server.cli", "serve", "--processes", str(processes)],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    seen: set[int] = set()

    def all_ready() -> bool:
        status, _h, body = fetch(port, "GET", "/readyz")
        if status == 200:
            seen.add(orjson.loads(body)["pid"])
        return len(seen) >= processes

    wait_until(all_ready, 60, f"syndicate serve --processes {processes}", proc)
    return port, proc


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children still running (a supervisor's), so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def redis_calls(port: int) -> int:
    """Every command Redis has run so far (INFO commandstats)."""
    import redis as redis_sync

    with redis_sync.Redis(host="127.0.0.1", port=port) as redis:
        return sum(int(stats["calls"]) for stats in redis.info("commandstats").values())


def wrk_requests(wrk: str, port: int, path: str, headers: dict[str, str], seconds: float, threads: int,
                 connections: int, script: Path | None = None, script_args: list[str] | None = None
                 ) -> tuple[float, int, int]:
    """wrk's requests per second, requests and non-2xx/3xx answers."""
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}{path}")
    if script_args:
        argv += ["--", *script_args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    return float(rate.group(1)), int(total.group(1)), int(bad.group(1)) if bad else 0


def bench_scaling(children: Children, nginx: str, wrk: str, workdir: Path, seconds: float, rounds: int,
                  threads: int, connections: int, memory_articles: int) -> dict[str, Any]:
    """Cached GET (gzip, 304) and ingest for 1 and 2 processes (``--processes``), each beside nginx with as
    many workers; Redis commands per poll and per article from INFO commandstats (less the background
    jobs' idle rate); then memory per 1,000 articles and push deliveries per second of one process."""
    seed = load_seed(SEED_V1)
    path = "/feeds/latest/atom"
    template = make_document(seed, 0)
    template["uri"] = "urn:bench:scaling:__N__"
    template["headlines"][0]["value"] = "Scaling __N__"
    template_file = workdir / "ingest-template.json"
    template_file.write_bytes(orjson.dumps(template))
    script = workdir / "ingest.lua"
    script.write_text(f'args_token = "{PUBLISHER_TOKEN}"\n' + INGEST_LUA)
    result: dict[str, Any] = {"processes": {}, "seconds": seconds, "rounds": rounds, "threads": threads,
                              "connections": connections}
    for processes in SCALING_PROCESSES:
        redis_port = start_redis(children, workdir, f"redis-scaling-{processes}")
        port, server = start_processes(children, workdir, f"server-scaling-{processes}", redis_port, processes)
        client = Client(port)
        for index in range(FEED_ITEMS):
            publish(client, make_document(seed, index, extra_paragraphs=FEED_EXTRA_PARAGRAPHS))
        client.close()
        credentials, _note = feed_credentials(port)
        _s, head, identity = fetch(port, "GET", path, credentials)
        _s, _h, gzipped = fetch(port, "GET", path, {**credentials, "Accept-Encoding": "gzip"})
        nginx_port = start_nginx(children, nginx, workdir, identity, gzipped, name=f"nginx-scaling-{processes}",
                                 workers=processes)
        n_etag = fetch(nginx_port, "GET", path)[1]["etag"]
        cases = {"gzip": ({**credentials, "Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip"}),
                 "304": ({**credentials, "If-None-Match": head["etag"]}, {"If-None-Match": n_etag})}
        for side_port, headers in ((port, cases["gzip"][0]), (nginx_port, cases["gzip"][1])):  # warm up
            wrk_requests(wrk, side_port, path, headers, 1, threads, connections)
        idle_before, idle_at = redis_calls(redis_port), time.monotonic()
        time.sleep(3)
        background = (redis_calls(redis_port) - idle_before) / (time.monotonic() - idle_at)
        figures: dict[str, Any] = {"background_commands_per_s": background, "errors": 0}
        for case, (server_headers, nginx_headers) in cases.items():
            server_rates, nginx_rates, per_poll, per_cpu = [], [], [], []
            for _round in range(rounds):
                before, at, cpu = redis_calls(redis_port), time.monotonic(), cpu_seconds(server.pid)
                rate, total, bad = wrk_requests(wrk, port, path, server_headers, seconds, threads, connections)
                spent = time.monotonic() - at
                per_cpu.append(total / max(cpu_seconds(server.pid) - cpu, 1e-9))
                per_poll.append(max(0.0, redis_calls(redis_port) - before - background * spent) / max(total, 1))
                server_rates.append(rate)
                figures["errors"] += bad
                nginx_rates.append(wrk_requests(wrk, nginx_port, path, nginx_headers, seconds, threads, connections)[0])
            figures[case] = {"server": statistics.median(server_rates), "nginx": statistics.median(nginx_rates),
                             "commands": statistics.median(per_poll), "per_cpu": statistics.median(per_cpu)}
        ingest_rates, per_article, ingest_cpu = [], [], []
        for number in range(rounds):
            before, at, cpu = redis_calls(redis_port), time.monotonic(), cpu_seconds(server.pid)
            rate, total, bad = wrk_requests(wrk, port, "/api/articles", {}, seconds, threads, SCALING_INGEST_CONNECTIONS,
                                            script, [f"p{processes}r{number}", str(template_file)])
            spent = time.monotonic() - at
            time.sleep(1)  # the background work each article causes (fan-out, flushes) lands too
            ingest_cpu.append(total / max(cpu_seconds(server.pid) - cpu, 1e-9))
            per_article.append(max(0.0, redis_calls(redis_port) - before - background * (spent + 1)) / max(total, 1))
            ingest_rates.append(rate)
            figures["errors"] += bad
        figures["ingest"] = {"server": statistics.median(ingest_rates), "commands": statistics.median(per_article),
                             "per_cpu": statistics.median(ingest_cpu)}
        figures["bytes"] = {"identity": len(identity), "gzip": len(gzipped)}
        result["processes"][processes] = figures
        for proc in (server,):
            children.stop(proc, timeout=90)
        for name, proc in list(children.procs):
            if name in (f"nginx-scaling-{processes}", f"redis-scaling-{processes}"):
                children.stop(proc)
    result["memory"] = bench_memory(children, workdir, memory_articles)
    helper_ports, _helper = start_push_subscriber(children, workdir, 1)
    result["push"] = bench_push_fanout(children, workdir, SCALING_PUSH_SUBSCRIBERS, SCALING_PUSH_ARTICLES,
                                       helper_ports, seed, "scaling")
    return result


def scaling_report(scaling: dict[str, Any], load: str) -> str:
    one, two = scaling["processes"][1], scaling["processes"][2]
    memory, push = scaling["memory"], scaling["push"]
    per_thousand = 1000 / memory["count"]
    # Redis commands per delivery: the fan-out's, less its publications (at the ingest figure) and the
    # background jobs' idle rate over the time.
    delivery_commands = max(0.0, push["commands"] - push["articles"] * one["ingest"]["commands"]
                            - one["background_commands_per_s"] * push["commands_seconds"]) / max(push["received"], 1)
    lines = [
        f"Measured {dt.date.today().isoformat()} on {machine()}; load average before the run: {load}. "
        f"`make bench` part h (`scripts/bench.py --only scaling`): each column a fresh Redis and one "
        f"`syndicate serve --processes N` (push worker in process), 50 articles made from the seed; "
        f"wrk -t{scaling['threads']} -c{scaling['connections']} for GETs, -c{SCALING_INGEST_CONNECTIONS} for "
        f"ingest (every request a new article), median of {scaling['rounds']} x {scaling['seconds']:g} s; "
        f"nginx serves the same bytes from files with as many workers (the ceiling). wrk, the servers and "
        f"nginx share the same CPUs.",
        "",
        "| | 1 process | nginx, 1 worker | 2 processes | nginx, 2 workers | 2 processes / 1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| cached `GET {'/feeds/latest/atom'}`, gzip ({one['bytes']['gzip'] / 1000:.0f} KB) | "
        f"{one['gzip']['server']:,.0f} /s | {one['gzip']['nginx']:,.0f} /s | {two['gzip']['server']:,.0f} /s | "
        f"{two['gzip']['nginx']:,.0f} /s | {two['gzip']['server'] / one['gzip']['server']:.2f}x |",
        f"| 304 to `If-None-Match` | {one['304']['server']:,.0f} /s | {one['304']['nginx']:,.0f} /s | "
        f"{two['304']['server']:,.0f} /s | {two['304']['nginx']:,.0f} /s | "
        f"{two['304']['server'] / one['304']['server']:.2f}x |",
        f"| ingest, `POST /api/articles` (201) | {one['ingest']['server']:,.0f} /s | | "
        f"{two['ingest']['server']:,.0f} /s | | {two['ingest']['server'] / one['ingest']['server']:.2f}x |",
        "",
        "| Per CPU-second of the server processes (user + system, every child) | 1 process | 2 processes |",
        "| --- | ---: | ---: |",
        f"| cached polls (200, gzip) | {one['gzip']['per_cpu']:,.0f} | {two['gzip']['per_cpu']:,.0f} |",
        f"| 304s | {one['304']['per_cpu']:,.0f} | {two['304']['per_cpu']:,.0f} |",
        f"| articles ingested | {one['ingest']['per_cpu']:,.0f} | {two['ingest']['per_cpu']:,.0f} |",
        "",
        "| Redis commands (INFO commandstats, less the idle background rate) | 1 process | 2 processes |",
        "| --- | ---: | ---: |",
        f"| per cached poll (200, gzip) | {one['gzip']['commands']:.3f} | {two['gzip']['commands']:.3f} |",
        f"| per 304 | {one['304']['commands']:.3f} | {two['304']['commands']:.3f} |",
        f"| per article ingested (commit, fan-out, flushes) | {one['ingest']['commands']:.1f} | "
        f"{two['ingest']['commands']:.1f} |",
        f"| background jobs, idle, per second | {one['background_commands_per_s']:.1f} | "
        f"{two['background_commands_per_s']:.1f} |",
        f"| per push delivery (WebSub, signed, acknowledged; below) | {delivery_commands:.1f} | |",
        "",
        f"Memory: {(memory['one']['after'] - memory['one']['before']) * per_thousand / 1e6:.2f} MB of Redis per "
        f"1,000 articles of one revision ({memory['document_bytes'] / 1000:.1f} KB documents), "
        f"{(memory['two']['after'] - memory['two']['before']) * per_thousand / 1e6:.2f} MB with two revisions each. "
        f"Push: {push['rate']:,.0f} signed deliveries/s from one process ({push['subscribers']} WebSub subscribers "
        f"x {push['articles']} articles, one article at a time; p50 {push['p50']:.0f} ms, p99 {push['p99']:.0f} ms "
        f"from publication to arrival). Non-2xx/3xx answers during the runs: {one['errors'] + two['errors']}.",
    ]
    return "\n".join(lines)


PARTS = ("render", "throughput", "staleness", "memory", "push", "storm", "ops", "scaling")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", "--write-readme", dest="write_readme", action="store_true",
                        help="write the results into docs/benchmarks.md")
    parser.add_argument("--runs", type=int, default=30, help="render runs per measurement (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds per case")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--revisions", type=int, default=30, help="revisions for the staleness test")
    parser.add_argument("--memory-articles", type=int, default=1000, help="articles for the memory test")
    parser.add_argument("--push-subscribers", default="1,100,1000",
                        help="comma-separated subscriber counts for the push test (default 1,100,1000)")
    parser.add_argument("--push-rounds", type=int, default=3,
                        help="rounds per subscriber count; the round with the median p99 is reported")
    parser.add_argument("--push-ports", type=int, default=1,
                        help="loopback ports the subscriber helper spreads its callbacks over (default 1)")
    parser.add_argument("--storm-partners", type=int, default=100, help="partners in the storm (default 100)")
    parser.add_argument("--storm-articles", type=int, default=1000, help="stories in the storm (default 1,000)")
    parser.add_argument("--storm-seed", type=int, default=11, help="the storm's random seed")
    parser.add_argument("--ops-partners", type=int, default=1000, help="partners for the ops views (default 1000)")
    parser.add_argument("--ops-changes", type=int, default=10_000, help="changes in the window for the ops views")
    parser.add_argument("--ops-runs", type=int, default=30, help="requests per ops view (p95)")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS[1:],
                        help="leave out a part (repeatable)")
    parser.add_argument("--only", action="append", default=[], choices=PARTS,
                        help="run only this part (repeatable); throughput and staleness also measure "
                             "rendering, whose table they share")
    parser.add_argument("--push-subscriber-helper", help=argparse.SUPPRESS)  # the helper process itself
    args = parser.parse_args()
    if args.push_subscriber_helper:
        return run_push_subscriber(orjson.loads(args.push_subscriber_helper))
    parts = set(args.only) if args.only else set(PARTS) - set(args.skip)
    if parts & {"throughput", "staleness"}:
        parts.add("render")
    push_counts = [int(n) for n in args.push_subscribers.split(",") if n.strip()]
    started = time.monotonic()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    nginx, wrk = ensure_tools() if parts & {"throughput", "scaling"} else ("", "")
    children = Children()

    def on_signal(signum: int, _frame: Any) -> None:
        children.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="syndicate-bench-"))
    render = throughput = staleness = memory = push = storm = ops_views = scaling = None
    atom, credentials_note = b"", ""
    try:
        if "render" in parts:
            redis_port = start_redis(children, workdir, "redis")
            port_a, _proc_a = start_server(children, workdir, "server-a", redis_port)
            client = Client(port_a)
            seed = load_seed(SEED_V1)
            ids = []
            for index in range(FEED_ITEMS):
                document = make_document(seed, index, extra_paragraphs=FEED_EXTRA_PARAGRAPHS)
                publish(client, document)
                ids.append(article_id_for_uri(document["uri"]))
            client.close()
            credentials, credentials_note = feed_credentials(port_a)
            status, _h, atom = fetch(port_a, "GET", "/feeds/latest/atom", credentials)
            if status != 200:
                raise SystemExit(f"bench: GET /feeds/latest/atom answered {status}")
            print(f"published {FEED_ITEMS} articles; /feeds/latest/atom is {len(atom) / 1000:.0f} KB "
                  f"(feeds read with {credentials_note})", file=sys.stderr)

            print("a. rendering ...", file=sys.stderr)
            render = asyncio.run(bench_render(redis_port, list(reversed(ids)), args.runs))
            if "throughput" in parts:
                print("b. throughput against nginx ...", file=sys.stderr)
                throughput = bench_throughput(children, nginx, wrk, workdir, port_a, credentials, args.rounds,
                                              args.duration, args.threads, args.connections)
            if "staleness" in parts:
                print("c. cross-process staleness ...", file=sys.stderr)
                port_b, _proc_b = start_server(children, workdir, "server-b", redis_port)
                staleness = bench_staleness(port_a, port_b, credentials, seed, args.revisions)
            children.stop_all()  # the push test wants the machine to itself
        if "memory" in parts:
            print("d. memory per 1,000 articles ...", file=sys.stderr)
            memory = bench_memory(children, workdir, args.memory_articles)
        if "push" in parts:
            print("e. push to local WebSub subscribers ...", file=sys.stderr)
            push = bench_push(children, workdir, push_counts, args.push_ports, max(1, args.push_rounds))
        if "storm" in parts:
            print("f. the storm ...", file=sys.stderr)
            storm = bench_storm(workdir, args.storm_partners, args.storm_articles, args.storm_seed)
        if "ops" in parts:
            children.stop_all()
            print("g. ops views at 1,000 partners ...", file=sys.stderr)
            ops_views = bench_ops(children, workdir, args.ops_partners, args.ops_changes, args.ops_runs)
        if "scaling" in parts:
            children.stop_all()
            print("h. scaling: 1 and 2 processes against nginx ...", file=sys.stderr)
            scaling = bench_scaling(children, nginx, wrk, workdir, args.duration, args.rounds, args.threads,
                                    args.connections, args.memory_articles)
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    outputs = []
    if render is not None:
        outputs.append(("<!-- bench:start -->", "<!-- bench:end -->",
                        report(args, render, throughput, staleness, len(atom), credentials_note, load)))
    if memory is not None:
        outputs.append(("<!-- memory:start -->", "<!-- memory:end -->", memory_report(memory)))
    if push is not None:
        outputs.append(("<!-- push:start -->", "<!-- push:end -->", push_report(push, load)))
    if storm is not None:
        outputs.append(("<!-- storm:start -->", "<!-- storm:end -->", storm_report(storm, load)))
    if ops_views is not None:
        outputs.append(("<!-- ops:start -->", "<!-- ops:end -->", ops_report(ops_views, load)))
    if scaling is not None:
        outputs.append(("<!-- scaling:start -->", "<!-- scaling:end -->", scaling_report(scaling, load)))
    print("\n\n".join(text for _start, _end, text in outputs))
    if args.write_readme:
        for start_marker, end_marker, text in outputs:
            if start_marker == "<!-- storm:start -->" and start_marker not in BENCHMARKS_DOC.read_text():
                print("docs/benchmarks.md has no storm markers: the storm's figures are only printed", file=sys.stderr)
                continue
            # The scaling figures live in docs/scaling.md, beside what they are for.
            write_between(SCALING_DOC if start_marker == "<!-- scaling:start -->" else BENCHMARKS_DOC, start_marker,
                          end_marker, text)
        print("docs/benchmarks.md and docs/scaling.md updated", file=sys.stderr)
    print(f"bench took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
