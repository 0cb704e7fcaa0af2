"""docker-compose.yml's topology, run with local processes (there is no Docker engine here): Debian's
nginx with ``deploy/nginx.conf`` itself (only the lines marked "templated" rewritten: the listen port,
one upstream line per local server, the pid file), two ``syndicate serve`` and one ``syndicate worker``
with the compose file's settings (``SYNDICATE_WORKERS=OFF`` on the servers, ``SYNDICATE_TRUSTED_PROXIES``
the balancer's address), a Redis primary, a replica and three sentinels, and a bounded cache Redis.

Partners poll and a CMS publishes through the balancer while one server is SIGKILLed: every poll is
answered (nginx passes a failed GET to the other server), every publication acknowledged is in the store
and is pushed to the partner's webhook, and the servers log the client's address the balancer forwarded.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis as redis_sync
from conftest import (
    ADMIN,
    ADMIN_TOKEN,
    AUTH,
    PUBLISHER_TOKEN,
    ROOT,
    cli_env,
    free_port,
    start_redis,
    stop_processes,
)
from push_helpers import Subscriber, wait_for
from sentinel_helpers import running_cluster

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
CLIENT = "203.0.113.50"  # what the test's client claims to be; nginx appends the real peer (127.0.0.1)


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.exit("nginx is not installed: run `make test`, which installs it", returncode=3)
    return binary


def nginx_config(listen_port: int, upstream_ports: list[int], prefix: Path) -> str:
    """deploy/nginx.conf with its templated lines for this machine; nothing else changes."""
    text = NGINX_CONF.read_text()
    templated = [line for line in text.splitlines() if line.rstrip().endswith("# templated")]
    assert len(templated) == 3, templated

    def upstreams(match: re.Match[str]) -> str:
        parameters = match.group(2).replace(" resolve", "")  # Docker's DNS name: here, fixed addresses
        return "\n".join(f"{match.group(1)}server 127.0.0.1:{port}{parameters};" for port in upstream_ports)

    text, listens = re.subn(r"(?m)^(\s*)listen \d+( reuseport)?;\s*# templated$",
                            rf"\1listen 127.0.0.1:{listen_port}\2;", text)
    text, servers = re.subn(r"(?m)^(\s*)server \S+:\d+([^;]*);\s*# templated$", upstreams, text)
    text, pids = re.subn(r"(?m)^pid \S+;\s*# templated$", f"pid {prefix / 'nginx.pid'};", text)
    assert (listens, servers, pids) == (1, 1, 1)
    return text


@dataclass
class Topology:
    nginx_port: int
    server_ports: list[int]
    servers: list[subprocess.Popen]
    worker: subprocess.Popen
    store: redis_sync.Redis
    logs: list[Path]
    started: list[subprocess.Popen] = field(default_factory=list)


@pytest.fixture
def topology(tmp_path):
    cluster_run = running_cluster(tmp_path / "redis", quorum_known=False)
    cluster = next(cluster_run)
    started: list[subprocess.Popen] = []
    try:
        cache, cache_port = start_redis(tmp_path / "cache", "--appendonly", "no", "--maxmemory", "64mb",
                                        "--maxmemory-policy", "allkeys-lru")
        started.append(cache)
        nginx_port, server_ports = free_port(), [free_port(), free_port()]
        env = cli_env(REDIS_URL=cluster.url, SYNDICATE_CACHE_REDIS_URL=f"redis://127.0.0.1:{cache_port}/0",
                      SYNDICATE_BASE_URL=f"http://127.0.0.1:{nginx_port}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN,
                      SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_LOG_LEVEL="INFO",
                      SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8")
        logs = []
        servers = []
        for index, port in enumerate(server_ports):
            log = tmp_path / f"serve-{index}.log"
            logs.append(log)
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                env={**env, "SYNDICATE_PORT": str(port), "SYNDICATE_HOST": "127.0.0.1", "SYNDICATE_WORKERS": "OFF",
                     "SYNDICATE_TRUSTED_PROXIES": "127.0.0.1/32", "SYNDICATE_DATA_DIR": str(tmp_path / f"s{index}")}))
            started.append(servers[-1])
        worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], cwd=ROOT, env={
            **env, "SYNDICATE_DATA_DIR": str(tmp_path / "w")}, stdout=(tmp_path / "worker.log").open("wb"),
            stderr=subprocess.STDOUT)
        started.append(worker)
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_config(nginx_port, server_ports, prefix))
        nginx = nginx_binary()
        argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
        checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        started.append(subprocess.Popen([*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                        stderr=(prefix / "stderr.log").open("wb")))
        store = redis_sync.Redis(port=cluster.primary_port, decode_responses=True)
        yield Topology(nginx_port, server_ports, servers, worker, store, logs, started)
        store.close()
    finally:
        stop_processes(started, grace=20)
        cluster_run.close()


@dataclass
class Traffic:
    acknowledged: dict[str, str] = field(default_factory=dict)  # uri -> article id, answered 2xx
    refused: list[int] = field(default_factory=list)  # 502/503/504: not acknowledged, may be retried
    wrong: list[object] = field(default_factory=list)  # any other answer: a failure
    polls: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, status)


async def publisher(session: aiohttp.ClientSession, base: str, seed: dict, name: str, traffic: Traffic,
                    stop: asyncio.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        uri = f"urn:test:balanced:{name}:{number}"
        document = {**seed, "uri": uri, "headlines": [{"value": f"Balanced {name} {number}"}]}
        try:
            async with session.post(f"{base}/api/articles", data=orjson.dumps(document),
                                    headers={**JSON_HEADERS, "X-Forwarded-For": CLIENT}) as response:
                body = await response.read()
                if 200 <= response.status < 300:
                    traffic.acknowledged[uri] = orjson.loads(body)["id"]
                elif response.status in (502, 503, 504):
                    traffic.refused.append(response.status)
                else:
                    traffic.wrong.append((response.status, body[:200]))
        except aiohttp.ClientError as exc:  # the balancer never drops a client
            traffic.wrong.append(repr(exc))
        await asyncio.sleep(0.02)


async def poller(session: aiohttp.ClientSession, base: str, key: str, traffic: Traffic, stop: asyncio.Event) -> None:
    etag = None
    while not stop.is_set():
        headers = {"X-API-Key": key, "X-Forwarded-For": CLIENT, **({"If-None-Match": etag} if etag else {})}
        try:
            async with session.get(f"{base}/feeds/latest/json", headers=headers) as response:
                await response.read()
                traffic.polls.append((time.monotonic(), response.status))
                etag = response.headers.get("ETag", etag)
        except aiohttp.ClientError as exc:
            traffic.wrong.append(repr(exc))
        await asyncio.sleep(0.01)


def served_by_both(topology: Topology) -> bool:
    import http_helpers as http

    return all(http.get(port, "/readyz")[0] == 200 for port in topology.server_ports)


async def test_one_server_killed_behind_the_balancer(topology, seed_v1):
    started = time.monotonic()
    base = f"http://127.0.0.1:{topology.nginx_port}"
    receiver = await Subscriber().start()
    try:
        await wait_for(lambda: served_by_both(topology), timeout=40, interval=0.1, message="both servers ready")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            async def through_balancer() -> bool:
                try:
                    async with session.get(f"{base}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(through_balancer, timeout=15, interval=0.1, message="nginx to answer")
            async with session.post(f"{base}/api/partners", headers=ADMIN_JSON, data=orjson.dumps(
                    {"name": "acme", "feeds": ["*"], "formats": ["*"], "rate_limit": 100000})) as response:
                assert response.status == 201, await response.text()
                key = (await response.json())["key"]
            async with session.post(f"{base}/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
                    {"url": receiver.url(), "format": "ninjs", "secret": "s" * 32})) as response:
                assert response.status == 201, await response.text()

            traffic, stop = Traffic(), asyncio.Event()
            tasks = [asyncio.create_task(publisher(session, base, seed_v1, f"w{i}", traffic, stop)) for i in range(2)]
            tasks += [asyncio.create_task(poller(session, base, key, traffic, stop)) for _ in range(3)]
            await asyncio.sleep(2.0)
            before = len(traffic.acknowledged)
            victim = topology.servers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_at = time.monotonic()
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*tasks)

        acknowledged = traffic.acknowledged
        assert before > 0 and len(acknowledged) > before, (before, len(acknowledged))
        assert not traffic.wrong, traffic.wrong[:5]
        after_kill = [status for at, status in traffic.polls if at > killed_at]
        assert after_kill and set(after_kill) <= {200, 304}, sorted(set(after_kill))
        assert {status for _at, status in traffic.polls} <= {200, 304}
        # Nothing acknowledged is lost: in the store, and pushed to the partner by the worker.
        stored = set(topology.store.hkeys("syn:articles:by-uri"))
        lost = [uri for uri in acknowledged if uri not in stored]
        assert not lost, lost[:5]

        def pushed() -> set[str]:
            return {orjson.loads(p.body).get("uri", "") for p in receiver.delivered}
        await wait_for(lambda: set(acknowledged) <= pushed(), timeout=30, interval=0.2,
                       message="every acknowledged article to be pushed")
        # The servers saw the client the balancer forwarded, not the balancer.
        lines = [orjson.loads(line) for line in topology.logs[1].read_text().splitlines() if line.startswith("{")]
        clients = {e.get("client") for e in lines if e.get("logger") == "syndicate.access" and e["path"].startswith("/feeds/")}
        assert clients == {CLIENT}, clients
        print(f"\nbalanced: {len(acknowledged)} publications acknowledged ({before} before the kill), 0 lost, "
              f"{len(traffic.refused)} answered 502-504, {len(traffic.polls)} polls all answered "
              f"({len(after_kill)} after the kill); run took {time.monotonic() - started:.0f} s")
    finally:
        await receiver.close()
