"""Two server processes on one Redis: a change taken by one is served by the other within moments
(pub/sub with generation numbers), and by the one that took it at once (read-your-writes)."""

from __future__ import annotations

import subprocess
import sys
import time

import http_helpers as http
import orjson
from conftest import ADMIN_TOKEN, PUBLISHER_TOKEN, ROOT, SEED_V1, SEED_V2, cli_env, free_port

HEADERS = {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"}


def start_server(redis_url: str, data_dir, port: int) -> subprocess.Popen:
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(data_dir), SYNDICATE_PORT=str(port),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN)
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if http.get(port, "/readyz")[0] == 200:
            return process
        assert process.poll() is None, "server exited"
        time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not become ready")


def feed_version(port: int) -> str | None:
    status, body = http.get(port, "/feeds/latest/json")
    assert status == 200
    items = orjson.loads(body)["items"]
    return str(items[0]["_syndicate"]["version"]) if items else None


def test_a_change_reaches_the_other_process(redis_url, tmp_path):
    port_a, port_b = free_port(), free_port()
    a = start_server(redis_url, tmp_path / "a", port_a)
    b = start_server(redis_url, tmp_path / "b", port_b)
    try:
        assert http.request(port_a, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)[0] == 201
        deadline = time.monotonic() + 10
        while feed_version(port_b) != "1" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed_version(port_b) == "1"  # B has rendered and holds version 1 in memory
        assert feed_version(port_b) == "1"

        status, _ = http.request(port_a, "POST", "/api/articles?signal=correction", SEED_V2.read_bytes(), HEADERS)
        assert status == 200
        assert feed_version(port_a) == "2"  # read-your-writes on the process that took it
        deadline = time.monotonic() + 10  # generous slack; the benchmark measures the real delay
        while feed_version(port_b) != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed_version(port_b) == "2"
    finally:
        for process in (a, b):
            process.terminate()
            process.wait(20)
