"""A Redis primary, a replica and three sentinels (``redis-server --sentinel``) on free loopback ports in
temp dirs, for the tests that need Sentinel (``test_sentinel.py``, ``test_balanced_deployment.py``).
Every process is stopped by its own pid."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync
from conftest import free_port, start_redis, stop_processes

SERVICE = "news"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


@dataclass
class Cluster:
    primary: subprocess.Popen
    primary_port: int
    replica: subprocess.Popen
    replica_port: int
    sentinels: list[tuple[subprocess.Popen, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for _, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def sentinel(self, index: int = 0) -> redis_sync.Redis:
        return redis_sync.Redis(port=self.sentinels[index][1], decode_responses=True, socket_timeout=2)

    def master_port(self) -> int:
        host, port = self.sentinel().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def processes(self) -> list[subprocess.Popen]:
        return [self.primary, self.replica, *(p for p, _ in self.sentinels)]


def start_sentinel(directory: Path, primary_port: int) -> tuple[subprocess.Popen, int]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    assert port != 6379
    conf = directory / "sentinel.conf"
    conf.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {directory}", f"logfile {directory / 'sentinel.log'}",
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {SERVICE} 1", ""]))
    process = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, port


def wait_until(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis_sync.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def running_cluster(tmp_path: Path, quorum_known: bool = True) -> Iterator[Cluster]:
    """The cluster, up; ``quorum_known``: wait until every sentinel knows the others and the replica
    (needed before a failover can be agreed on)."""
    started: list[subprocess.Popen] = []
    try:
        primary, primary_port = start_redis(tmp_path / "primary")
        started.append(primary)
        replica, replica_port = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary_port))
        started.append(replica)
        cluster = Cluster(primary, primary_port, replica, replica_port)
        for index in range(3):
            process, port = start_sentinel(tmp_path / f"sentinel{index}", primary_port)
            started.append(process)
            cluster.sentinels.append((process, port))
        wait_until(lambda: redis_sync.Redis(port=replica_port).info("replication")["master_link_status"] == "up",
                   10, "the replica to sync")
        # Every sentinel knows the replica and the two others (hello messages every 2 s): a quorum
        # can agree that the primary is down, and elect a leader.
        def known() -> bool:
            return all(int(s.sentinel_master(SERVICE)["num-other-sentinels"]) == 2
                       and s.sentinel_slaves(SERVICE) for s in (cluster.sentinel(i) for i in range(3)))
        if quorum_known:
            wait_until(known, 15, "the sentinels to know each other and the replica")
        yield cluster
    finally:
        stop_processes(started)

