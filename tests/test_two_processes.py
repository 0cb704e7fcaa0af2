"""Two server processes on one Redis: a change taken by one is served by the other within moments
(pub/sub with generation numbers), and by the one that took it at once (read-your-writes)."""

from __future__ import annotations

import subprocess
import sys
import time
from http.client import HTTPConnection

import http_helpers as http
import orjson
from conftest import ADMIN_TOKEN, PUBLISHER_TOKEN, ROOT, SEED_V1, SEED_V2, cli_env, free_port, make_partner

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


def feed_version(port: int, key: str) -> str | None:
    status, body = http.get(port, "/feeds/latest/json", {"X-API-Key": key})
    assert status == 200
    items = orjson.loads(body)["items"]
    return str(items[0]["_syndicate"]["version"]) if items else None


async def test_a_change_reaches_the_other_process(redis_url, tmp_path):
    key = await make_partner(redis_url)
    port_a, port_b = free_port(), free_port()
    a = start_server(redis_url, tmp_path / "a", port_a)
    b = start_server(redis_url, tmp_path / "b", port_b)
    try:
        assert http.request(port_a, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)[0] == 201
        deadline = time.monotonic() + 10
        while feed_version(port_b, key) != "1" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed_version(port_b, key) == "1"  # B has rendered and holds version 1 in memory
        assert feed_version(port_b, key) == "1"

        status, _ = http.request(port_a, "POST", "/api/articles?signal=correction", SEED_V2.read_bytes(), HEADERS)
        assert status == 200
        assert feed_version(port_a, key) == "2"  # read-your-writes on the process that took it
        deadline = time.monotonic() + 10  # generous slack; the benchmark measures the real delay
        while feed_version(port_b, key) != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed_version(port_b, key) == "2"
    finally:
        for process in (a, b):
            process.terminate()
            process.wait(20)


def fast_answers(port: int, process: subprocess.Popen) -> float:
    """How many polls ``process`` has answered on the fast path, asked of the process on ``port`` (its
    own figures are fresh; another process's are as of its last heartbeat)."""
    status, metrics = http.get(port, "/metrics", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200
    return sum(float(line.split()[-1]) for line in metrics.decode().splitlines()
               if line.startswith("syndicate_http_fast_path_answers_total") and f':{process.pid}"' in line)


def test_revocation_and_disabling_reach_every_process(redis_url, tmp_path):
    port_a, port_b = free_port(), free_port()
    a = start_server(redis_url, tmp_path / "a", port_a)
    b = start_server(redis_url, tmp_path / "b", port_b)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    try:
        status, body = http.request(port_a, "POST", "/api/partners", orjson.dumps(
            {"name": "acme", "feeds": ["latest"], "formats": ["json"]}), admin)
        assert status == 201
        created = orjson.loads(body)
        key = {"X-API-Key": created["key"]}
        # Each process is polled over one kept-alive connection, as a partner's reader does: repeated
        # polls there are answered on the fast path (server.http.fast_path), which must see revocations too.
        pollers = {port: HTTPConnection("127.0.0.1", port, timeout=10) for port in (port_a, port_b)}

        def allowed_on(port: int) -> int:
            pollers[port].request("GET", "/feeds/latest/json", headers=key)
            response = pollers[port].getresponse()
            response.read()
            return response.status

        assert allowed_on(port_a) == 200
        deadline = time.monotonic() + 5
        while allowed_on(port_b) != 200 and time.monotonic() < deadline:  # B learns of the new partner
            time.sleep(0.01)
        assert allowed_on(port_b) == 200
        # Poll on until each connection is being answered on the fast path (after an answer from the
        # route, aiohttp may take the next request too, if it comes before it waits for one).
        for port, process in ((port_a, a), (port_b, b)):
            deadline = time.monotonic() + 5
            while fast_answers(port, process) == 0 and time.monotonic() < deadline:
                assert allowed_on(port) == 200
            assert fast_answers(port, process) > 0

        status, _ = http.request(port_a, "DELETE", f"/api/partners/acme/keys/{created['key_id']}", None, admin)
        assert status == 200
        assert allowed_on(port_a) == 401  # at once on the process that revoked it
        revoked_at = time.monotonic()
        while allowed_on(port_b) != 401 and time.monotonic() - revoked_at < 5:
            time.sleep(0.01)
        assert allowed_on(port_b) == 401
        assert time.monotonic() - revoked_at < 5  # the target is under a second; slack for a loaded machine

        status, body = http.request(port_b, "POST", "/api/partners/acme/keys", None, admin)
        key = {"X-API-Key": orjson.loads(body)["key"]}
        deadline = time.monotonic() + 5
        while allowed_on(port_a) != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert allowed_on(port_a) == 200
        status, _ = http.request(port_b, "PATCH", "/api/partners/acme", orjson.dumps({"active": False}), admin)
        assert status == 200 and allowed_on(port_b) == 401
        deadline = time.monotonic() + 5
        while allowed_on(port_a) != 401 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert allowed_on(port_a) == 401
    finally:
        for process in (a, b):
            process.terminate()
            process.wait(20)


async def test_a_served_process_sends_whole_bodies_under_concurrent_polls(redis_url, tmp_path):
    """``syndicate serve`` runs on uvloop with zero-copy writes (headers and body handed over as two
    buffers) and answers kept-alive polls on the fast path: every response to many concurrent
    keep-alive polls must still be the whole body."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor
    from http.client import HTTPConnection

    key = await make_partner(redis_url)
    port = free_port()
    server = start_server(redis_url, tmp_path / "a", port)
    try:
        assert http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)[0] == 201
        status, identity = http.get(port, "/feeds/latest/atom", {"X-API-Key": key})
        assert status == 200 and len(identity) > 4096 and identity.rstrip().endswith(b"</feed>")

        def poll(n: int) -> bytes:
            coding = "gzip" if n % 2 else "identity"
            connection = HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                bodies = []
                for _ in range(10):
                    connection.request("GET", "/feeds/latest/atom",
                                       headers={"X-API-Key": key, "Accept-Encoding": coding})
                    response = connection.getresponse()
                    assert response.status == 200
                    body = response.read()
                    bodies.append(gzip.decompress(body) if coding == "gzip" else body)
                return b"".join(b"" if body == identity else b"x" for body in bodies)
            finally:
                connection.close()

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(poll, range(32))) == [b""] * 32
        # Most of those polls were kept-alive repeats: answered on the fast path (server.http.fast_path).
        status, metrics = http.get(port, "/metrics", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        fast = [line for line in metrics.decode().splitlines() if line.startswith("syndicate_http_fast_path_answers")]
        assert status == 200 and len(fast) == 1 and float(fast[0].split()[-1]) >= 32 * 5
    finally:
        server.terminate()
        server.wait(20)
