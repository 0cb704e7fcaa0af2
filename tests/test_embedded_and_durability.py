"""The embedded redis-server, and that an acknowledged write survives SIGKILL of the server and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import http_helpers as http
import orjson
import pytest
import redis as redis_sync
from conftest import ADMIN_TOKEN, PUBLISHER_TOKEN, ROOT, SEED_V1, cli_env, free_port, start_redis

from server.core.embedded_redis import EmbeddedRedisError, start_embedded_redis
from server.core.redis_connection import connect, durability_warnings
from server.domain.articles import article_id_for_uri


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_embedded_redis_is_durable_private_and_stops(tmp_path):
    embedded = start_embedded_redis(tmp_path)
    try:
        assert embedded.owner and embedded.running
        client = redis_sync.Redis.from_url(embedded.url, decode_responses=True)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("dir")["dir"] == str((tmp_path / "redis").resolve())
        assert int(client.config_get("port")["port"]) != 6379
        client.close()

        other = start_embedded_redis(tmp_path)  # a second process finds the owner and reuses its Redis
        assert not other.owner and other.url == embedded.url
        other.stop()
        assert embedded.running
    finally:
        pid = embedded.process.pid
        embedded.stop()
    assert not pid_alive(pid)
    assert not (tmp_path / "redis" / "endpoint").exists()


def test_missing_redis_server_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddedRedisError, match="apt-get install redis-server"):
        start_embedded_redis(tmp_path, "no-such-redis-server-binary")


def test_leftover_redis_server_on_our_data_is_stopped_and_data_kept(tmp_path):
    directory = tmp_path / "redis"
    process, port = start_redis(directory, "--pidfile", str(directory / "redis.pid"))
    redis_sync.Redis(port=port).set("durable-key", "kept")
    embedded = start_embedded_redis(tmp_path)
    try:
        assert process.wait(20) is not None  # the leftover was shut down cleanly
        assert redis_sync.Redis.from_url(embedded.url).get("durable-key") == b"kept"
    finally:
        embedded.stop()


async def test_durability_warnings_for_an_external_redis(tmp_path):
    process, port = start_redis(tmp_path / "lax", "--appendonly", "no", "--maxmemory-policy", "allkeys-lru")
    try:
        client = await connect(f"redis://127.0.0.1:{port}/0")
        warnings = await durability_warnings(client)
        assert any("appendonly" in w for w in warnings)
        assert any("allkeys-lru" in w for w in warnings)
        await client.config_set("appendonly", "yes")
        await client.config_set("appendfsync", "everysec")
        await client.config_set("maxmemory-policy", "volatile-lru")
        warnings = await durability_warnings(client)
        assert len(warnings) == 1 and "everysec" in warnings[0]
        await client.aclose()
    finally:
        process.kill()
        process.wait(10)


def _start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = cli_env(SYNDICATE_DATA_DIR=str(data_dir), SYNDICATE_PORT=str(port),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN)
    server = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready = wait_until(lambda: http.get(port, "/readyz")[0] == 200 or server.poll() is not None, 30)
    assert ready and server.poll() is None, server.stderr.read().decode() if server.poll() is not None else ""
    return server


HEADERS = {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"}


def _versions(port: int, article_id: str) -> list[int]:
    status, body = http.request(port, "GET", f"/api/articles/{article_id}/versions", None, HEADERS)
    assert status == 200
    return [v["version"] for v in orjson.loads(body)["versions"]]


def test_acknowledged_write_survives_sigkill_and_no_redis_is_left(tmp_path, seed_v2):
    port = free_port()
    article_id = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])

    # 1. SIGKILL the server alone: its redis-server must go with it, and the write must be kept.
    server = _start_server(tmp_path, port)
    redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
    status, _ = http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)
    assert status == 201
    server.send_signal(signal.SIGKILL)  # right after the acknowledgement
    server.wait(10)
    assert wait_until(lambda: not pid_alive(redis_pid), 20), "the embedded redis-server outlived its server"

    # 2. SIGKILL Redis first (no clean shutdown at all), then the server.
    server = _start_server(tmp_path, port)
    assert _versions(port, article_id) == [1]
    redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
    status, _ = http.request(port, "POST", "/api/articles?signal=correction", orjson.dumps(seed_v2), HEADERS)
    assert status == 200
    os.kill(redis_pid, signal.SIGKILL)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    assert wait_until(lambda: not pid_alive(redis_pid), 20)

    # 3. Start again: both acknowledged revisions are there; a clean stop leaves no redis-server.
    server = _start_server(tmp_path, port)
    try:
        assert _versions(port, article_id) == [1, 2]
        new_redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    assert wait_until(lambda: not pid_alive(new_redis_pid), 20)


def test_a_dead_embedded_redis_is_restarted_and_healthz_tells_meanwhile(tmp_path, seed_v2):
    """SIGKILL the embedded redis-server under a running server: it is started again on the same port
    and data, every acknowledged write is still there, and writes work again without a server restart."""
    port = free_port()
    article_id = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])
    server = _start_server(tmp_path, port)
    try:
        assert http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)[0] == 201
        redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
        os.kill(redis_pid, signal.SIGKILL)
        assert wait_until(lambda: http.get(port, "/healthz")[0] == 503 or _restarted(tmp_path, redis_pid), 10)
        assert wait_until(lambda: _restarted(tmp_path, redis_pid) and http.get(port, "/healthz")[0] == 200, 30)
        assert wait_until(lambda: http.request(port, "POST", "/api/articles?signal=correction",
                                               orjson.dumps(seed_v2), HEADERS)[0] == 200, 20)
        assert _versions(port, article_id) == [1, 2]
        assert wait_until(lambda: http.get(port, "/readyz")[0] == 200, 20)  # once the groups are made again
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)


def _restarted(data_dir: Path, old_pid: int) -> bool:
    try:
        pid = int((data_dir / "redis" / "redis.pid").read_text())
    except (FileNotFoundError, ValueError):
        return False
    return pid != old_pid and pid_alive(pid)
