"""``syndicate serve --processes N`` and ``syndicate worker --processes N``: one supervisor, N children
sharing one port (a ``SO_REUSEPORT`` socket per slot, bound by the supervisor), the embedded Redis owned
by the supervisor alone, a crashed child started again, SIGTERM drained (the request in flight
finishes, the ledger is flushed, every process exits 0), and a child that always crashes makes the
supervisor give up with a non-zero status. Real processes, real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import http_helpers as http
import orjson
import pytest
import redis as redis_sync
from conftest import ADMIN_TOKEN, PUBLISHER_TOKEN, ROOT, SEED_V1, cli_env, free_port, start_redis

HEADERS = {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"}
ADMIN_JSON = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.add(int(entry.name))
    return found


def command_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def syndicate_children(pid: int) -> set[int]:
    return {child for child in children_of(pid) if "server.cli" in command_of(child)}


def wait_until(predicate, timeout: float, message: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{message}: the supervisor exited with {process.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def start(command: str, tmp_path: Path, processes: int = 2, port: int | None = None, **env: str) -> subprocess.Popen:
    environment = cli_env(SYNDICATE_DATA_DIR=str(tmp_path / "var"), SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}",
                          SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN, SYNDICATE_LOG_FORMAT="TEXT", **env)
    if port is not None:
        environment["SYNDICATE_PORT"] = str(port)
    log = open(tmp_path / f"{command}.log", "ab")  # noqa: SIM115 (kept open for the process)
    return subprocess.Popen([sys.executable, "-m", "server.cli", command, "--processes", str(processes)],
                            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ready_pid(port: int) -> int | None:
    """The pid of the process that answered /readyz on a new connection (None: no answer, or not ready)."""
    status, body = http.get(port, "/readyz")
    return orjson.loads(body)["pid"] if status == 200 else None


def answering_pids(port: int, expected: set[int], tries: int = 200) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        pid = ready_pid(port)
        if pid is not None:
            seen.add(pid)
        if seen >= expected:
            break
    return seen


@pytest.fixture
def served(tmp_path):
    """Two server processes on one port under a supervisor, with the embedded Redis (no REDIS_URL)."""
    port = free_port()
    supervisor = start("serve", tmp_path, port=port, SYNDICATE_REDIS_TIMEOUT_MS="5000")
    try:
        pids = wait_until(lambda: len(syndicate_children(supervisor.pid)) == 2 and syndicate_children(supervisor.pid),
                          30, "two children", supervisor)
        wait_until(lambda: answering_pids(port, pids, tries=20) == pids, 60, "both children to answer", supervisor)
        yield supervisor, port, pids
    finally:
        stop(supervisor)


def embedded_redis(tmp_path: Path) -> redis_sync.Redis:
    port = int((tmp_path / "var" / "redis" / "endpoint").read_text())
    return redis_sync.Redis(port=port, decode_responses=True)


def test_two_children_serve_one_port_and_only_the_supervisor_owns_redis(served, tmp_path):
    supervisor, port, pids = served
    assert answering_pids(port, pids) == pids
    # One redis-server, the supervisor's child; each server process is a client of it.
    redis_children = [p for p in children_of(supervisor.pid) if "redis-server" in command_of(p)]
    assert len(redis_children) == 1
    assert not any("redis-server" in command_of(grandchild) for pid in pids for grandchild in children_of(pid))
    # A write taken by one child is read by the other: they share the store.
    status, _ = http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)
    assert status == 201
    ids = {orjson.loads(http.get(port, "/api/articles", HEADERS)[1])["items"][0]["id"] for _ in range(20)}
    assert len(ids) == 1
    assert embedded_redis(tmp_path).ping()


def test_a_killed_child_is_started_again_and_serves(served):
    supervisor, port, pids = served
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    replacement = wait_until(lambda: (syndicate_children(supervisor.pid) - pids) if len(
        syndicate_children(supervisor.pid)) == 2 else None, 30, "a replacement child", supervisor)
    now = (pids - {victim}) | replacement
    assert victim not in syndicate_children(supervisor.pid)
    # Every request is answered meanwhile (a connection for the dead slot waits in its backlog).
    assert answering_pids(port, now) == now
    assert supervisor.poll() is None


def test_the_supervisor_restarts_the_embedded_redis_it_owns(served, tmp_path):
    supervisor, port, pids = served
    status, _ = http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), HEADERS)
    assert status == 201
    [redis_pid] = [p for p in children_of(supervisor.pid) if "redis-server" in command_of(p)]
    os.kill(redis_pid, signal.SIGKILL)
    wait_until(lambda: [p for p in children_of(supervisor.pid) if "redis-server" in command_of(p)
                        and p != redis_pid], 30, "a new embedded redis-server", supervisor)
    wait_until(lambda: answering_pids(port, pids, tries=20) == pids, 30, "both children ready again", supervisor)
    assert syndicate_children(supervisor.pid) == pids  # the servers themselves were not restarted
    assert embedded_redis(tmp_path).hlen("syn:articles:by-uri") == 1  # on the same data (AOF)

def test_sigterm_drains_every_child_and_exits_0(served, tmp_path):
    supervisor, port, pids = served
    status, body = http.request(port, "POST", "/api/partners", orjson.dumps(
        {"name": "acme", "feeds": ["*"], "formats": ["*"]}), ADMIN_JSON)
    assert status == 201
    key = orjson.loads(body)["key"]
    for _ in range(5):  # polls answered (ledger lines buffered) just before the signal
        assert http.get(port, "/feeds/latest/json", {"X-API-Key": key})[0] == 200
    # A request in flight: a publication whose commit waits for Redis (writes paused for 2 s), during
    # which the supervisor is told to stop.
    store = embedded_redis(tmp_path)
    store.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    paused_at = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        body = SEED_V1.read_bytes()
        sock.sendall((f"POST /api/articles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISHER_TOKEN}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        time.sleep(0.5)
        supervisor.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert supervisor.poll() is None  # draining: the request is in flight
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, "the connection closed before an answer"
            answer += chunk
    assert time.monotonic() - paused_at >= 1.9  # answered once Redis took writes again
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
    assert supervisor.wait(60) == 0
    assert not syndicate_children(supervisor.pid)
    log = (tmp_path / "serve.log").read_text()
    assert "exited" not in log  # no child was treated as crashed
    # Everything was flushed before the processes exited: the article, and the partner's poll lines.
    # (The supervisor stopped the embedded Redis; a Redis of the test's own reads its AOF.)
    process, redis_port = start_redis(tmp_path / "var" / "redis", "--appendfilename", "appendonly.aof")
    try:
        reader = redis_sync.Redis(port=redis_port, decode_responses=True)
        polls = reader.xrange("syn:partner:acme:polls")
        assert sum(int(fields.get("count", 1)) for _id, fields in polls) == 5
        assert reader.hlen("syn:articles:by-uri") == 1
        reader.close()
    finally:
        process.terminate()
        process.wait(10)

def test_a_child_that_always_crashes_makes_the_supervisor_exit_non_zero(tmp_path):
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "broken.toml").write_text("title = \n")  # every child fails at start-up
    started = time.monotonic()
    supervisor = start("serve", tmp_path, port=free_port(), SYNDICATE_FEEDS_DIR=str(feeds))
    try:
        status = supervisor.wait(90)
    finally:
        stop(supervisor)
    assert status == 1
    log = (tmp_path / "serve.log").read_text()
    assert "giving up" in log and "starting it again in" in log
    assert time.monotonic() - started < 90
    assert not syndicate_children(supervisor.pid)


def test_worker_processes_under_one_supervisor(redis_url, tmp_path):
    supervisor = start("worker", tmp_path, REDIS_URL=redis_url)
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        pids = wait_until(lambda: len(syndicate_children(supervisor.pid)) == 2 and syndicate_children(supervisor.pid),
                          30, "two workers", supervisor)

        def heartbeats() -> set[int]:
            return {int(k.rsplit(":", 1)[1]) for k in client.scan_iter("syn:heartbeat:worker:*")}
        wait_until(lambda: heartbeats() >= pids, 30, "both workers' heartbeats", supervisor)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(syndicate_children(supervisor.pid) - pids) == 1, 30, "a replacement worker", supervisor)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
        assert not syndicate_children(supervisor.pid)
    finally:
        stop(supervisor)
        client.close()


def test_the_process_settings_and_a_bad_count(tmp_path):
    from server.core.settings import Settings, SettingsError

    assert (Settings.from_env({}).processes, Settings.from_env({}).worker_processes) == (1, 1)
    settings = Settings.from_env({"SYNDICATE_PROCESSES": "4", "SYNDICATE_WORKER_PROCESSES": "2"})
    assert (settings.processes, settings.worker_processes) == (4, 2)
    with pytest.raises(SettingsError, match="SYNDICATE_PROCESSES"):
        Settings.from_env({"SYNDICATE_PROCESSES": "0"})
    from conftest import run_cli

    result = run_cli("serve", "--processes", "0", env=cli_env(SYNDICATE_DATA_DIR=str(tmp_path / "var")))
    assert result.returncode == 2 and result.stderr.strip() == "syndicate: --processes: 0 is out of range (from 1 to 256)"


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = start("serve", tmp_path, port=port)
        try:
            assert supervisor.wait(60) == 2
        finally:
            stop(supervisor)
    assert f"syndicate: cannot listen on 127.0.0.1:{port}: Address already in use" in (tmp_path / "serve.log").read_text()
