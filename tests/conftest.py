"""Test fixtures: a real redis-server on a free port in a temp dir (never 6379), the app on it, and
the seed article. Each test starts from an empty database."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync
from aiohttp.test_utils import TestServer

from server.core.redis_address import DirectRedis
from server.core.settings import PublisherToken, Settings
from server.http.app import create_app
from server.http.connections import LimitedRunner
from server.http.fast_path import FastPathRunner

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ARTICLES = SHARED / "fixtures" / "articles"
if not ARTICLES.exists():
    ARTICLES = ROOT / "examples"
SEED_V1 = ARTICLES / "serious-crime-convicts.v1.ninjs.json"
SEED_V2 = ARTICLES / "serious-crime-convicts.v2-correction.ninjs.json"
PUBLISHER_TOKEN = "test-publisher-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {PUBLISHER_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# SYNDICATE_FAST_PATH=off runs the tests with aiohttp's own runner (make test runs the feed tests both ways).
FAST_PATH = Settings.from_env({k: v for k, v in os.environ.items() if k == "SYNDICATE_FAST_PATH"}).fast_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(directory: Path, *extra: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """A redis-server of the tests' own, durable like the embedded one; on ``port`` (one it had before, to
    start it again on the same port and data) or a free one."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit("redis-server is not installed: run `make test`, which installs it", returncode=3)
    directory.mkdir(parents=True, exist_ok=True)
    fixed = port
    for _attempt in range(5):
        port = fixed or free_port()
        assert port != 6379
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "volatile-lru",
             "--logfile", str(directory / "redis.log"), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with redis_sync.Redis(port=port) as client:
            for _ in range(200):
                if process.poll() is not None:
                    break
                try:
                    client.ping()
                    return process, port
                except redis_sync.ConnectionError:
                    time.sleep(0.02)
        process.kill()
        process.wait()
    raise RuntimeError("could not start a test redis-server")


def stop_processes(started: list[subprocess.Popen], grace: float = 10) -> None:
    """Stop every process a test started, each by its own pid: SIGTERM to all, then SIGKILL to any
    still running after ``grace`` seconds."""
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis_sync.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_address=DirectRedis(redis_url),
        data_dir=tmp_path / "var",
        publisher_tokens=(PublisherToken("newsroom", PUBLISHER_TOKEN),),
        admin_token=ADMIN_TOKEN,
        feeds_dir=ROOT / "feeds",
        fast_path=FAST_PATH,
    )


class FastPathTestServer(TestServer):
    """aiohttp's test server with the runner ``syndicate serve`` uses: cached feed polls on a kept-alive
    connection are answered by :mod:`server.http.fast_path`, as in production."""

    async def _make_runner(self, **kwargs):
        return FastPathRunner(self.app, **kwargs)


class LimitedTestServer(TestServer):
    """aiohttp's test server with the runner ``syndicate serve`` uses without the fast path: connections
    capped and timed by :mod:`server.http.connections`."""

    async def _make_runner(self, **kwargs):
        return LimitedRunner(self.app, **kwargs)


def app_server(settings: Settings) -> TestServer:
    """The app on the runner ``syndicate serve`` would choose for ``settings`` (``SYNDICATE_FAST_PATH``)."""
    app = create_app(settings)
    return FastPathTestServer(app) if settings.fast_path else LimitedTestServer(app)


def check_fast_path(server: TestServer) -> None:
    """Fail the test if its server was to answer on the fast path and could not (aiohttp lacking an
    internal it needs): a fallback to the ordinary path is never silent in the tests."""
    runner = server.runner
    fast_path = getattr(runner.server, "fast_path", None) if runner is not None else None
    if fast_path is not None and fast_path.unavailable:
        pytest.fail(f"the fast path is on but unavailable: {fast_path.unavailable}")


@pytest.fixture
async def client(aiohttp_client, settings: Settings):
    client = await aiohttp_client(app_server(settings))
    yield client
    check_fast_path(client.server)


@pytest.fixture
def seed_v1() -> dict:
    return orjson.loads(SEED_V1.read_bytes())


@pytest.fixture
def seed_v2() -> dict:
    return orjson.loads(SEED_V2.read_bytes())


def snapshot(url: str) -> dict[bytes, object]:
    """Every key and its value, read by type: equal snapshots mean an unchanged store. (DUMP is not
    used: a hash's serialised order can change when Redis rehashes it on a read.) Short-lived locks
    of background jobs are not part of the store."""
    readers = {
        b"string": lambda r, k: r.get(k),
        b"hash": lambda r, k: r.hgetall(k),
        b"zset": lambda r, k: r.zrange(k, 0, -1, withscores=True),
        b"set": lambda r, k: sorted(r.smembers(k)),
        b"list": lambda r, k: r.lrange(k, 0, -1),
        b"stream": lambda r, k: r.xrange(k),
    }
    with redis_sync.Redis.from_url(url) as raw:
        return {key: (raw.type(key), readers[raw.type(key)](raw, key))
                for key in sorted(raw.keys("*")) if not key.startswith(b"syn:lock:")}


async def room_in_rate_window(seconds: float = 15) -> None:
    """Wait, if need be, for a fresh rate-limit window, so a scenario that counts requests against a
    partner's limit cannot straddle a window boundary (where the count rightly starts again)."""
    from server.partners.ratelimit import WINDOW_SECONDS

    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < seconds:
        await asyncio.sleep(left + 0.05)


async def make_partner(redis_url: str, name: str = "reader", feeds=("*",), formats=("*",), **options) -> str:
    """A partner made straight in Redis (as the CLI does); returns its key."""
    from server.core.redis_connection import connect
    from server.domain.feeds import load_feed_definitions
    from server.partners.store import PartnerStore

    redis = await connect(redis_url)
    try:
        store = PartnerStore(redis, load_feed_definitions(ROOT / "feeds"))
        return (await store.create(name, list(feeds), list(formats), **options)).key
    finally:
        await redis.aclose()


@pytest.fixture
async def partner_client(aiohttp_client, settings: Settings, redis_url: str):
    """A client that reads feeds with the key of a partner entitled to everything."""
    key = await make_partner(redis_url)
    client = await aiohttp_client(app_server(settings), headers={"X-API-Key": key})
    yield client
    check_fast_path(client.server)


def cli_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_") and k != "REDIS_URL"}
    env.update(overrides)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 60, input: str | None = None):
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, input=input)


# ----- push: the app allowed to push to loopback, and receivers -------------------------------------

ALLOW_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
def push_settings(settings):
    return dataclasses.replace(settings, push_allow_networks=ALLOW_LOOPBACK)


@pytest.fixture
async def push(aiohttp_client, push_settings):
    """The app allowed to push to 127.0.0.0/8 (the subscribers' address)."""
    return await aiohttp_client(create_app(push_settings))


@pytest.fixture
async def receivers():
    """Start receivers with ``await receivers(Behaviour(...))``; all are closed after the test."""
    from push_helpers import Behaviour, Subscriber

    started: list[Subscriber] = []

    async def start(behaviour: Behaviour | None = None) -> Subscriber:
        receiver = await Subscriber(behaviour or Behaviour()).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.close()
