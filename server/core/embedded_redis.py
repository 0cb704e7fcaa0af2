"""The private ``redis-server`` the server runs when no ``REDIS_URL`` is set.

One process owns it: the owner holds an exclusive ``flock`` on ``<data>/redis/owner.lock`` for its
whole life, starts ``redis-server`` on a free loopback port with durable settings (AOF, ``appendfsync
always``, a ``maxmemory`` (``SYNDICATE_REDIS_MAXMEMORY_MB``) with ``maxmemory-policy volatile-lru``: only
TTL'd keys, the caches, are ever evicted), writes the port to ``<data>/redis/endpoint``, and stops it with
SIGTERM (a clean shutdown that flushes the AOF) on exit. The child is started with
``PR_SET_PDEATHSIG``, so the kernel stops it when its owner dies, even by SIGKILL; a ``redis-server``
left over anyway (its pidfile names a live process) is stopped before a new one starts.

Any other process that finds the lock held (``syndicate import`` while the server runs) reuses the
owner's Redis through the endpoint file instead of starting a second one on the same data.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MIN_MAXMEMORY_BYTES = 64 * 1024 * 1024

_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started; the message says what to do."""


@dataclass
class EmbeddedRedis:
    """A running embedded Redis: ``url`` to connect; ``owner`` when this process started it."""

    url: str
    directory: Path
    owner: bool
    process: subprocess.Popen[bytes] | None = None
    _lock_fd: int | None = field(default=None, repr=False)
    maxmemory_bytes: int = 0  # what the child was started with (0: reused, the owner's)

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the child down cleanly (owner only) and release the lock."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded redis-server did not stop in %.0fs; killing it", timeout)
                self.process.kill()
                self.process.wait()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "endpoint").unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def restart(self, binary: str, startup_timeout: float = 15.0) -> None:
        """Start the child again, on the same port and data (AOF), after it died (owner only). Call it
        from the main thread, like :func:`start_embedded_redis`."""
        if not self.owner or self.running:
            return
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        resolved = shutil.which(binary)
        if resolved is None:
            raise EmbeddedRedisError(f"'{binary}' was not found; the embedded Redis cannot be restarted")
        self.process, _port = _spawn(resolved, self.directory, startup_timeout, self.maxmemory_bytes, port=port)
        log.warning("embedded redis-server restarted: pid %d on 127.0.0.1:%d", self.process.pid, port)

    @property
    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return True  # reused: the owner supervises it


def default_maxmemory() -> int:
    """The embedded Redis's ``maxmemory`` when ``SYNDICATE_REDIS_MAXMEMORY_MB`` is 0: a quarter of the
    machine's memory, at least ``MIN_MAXMEMORY_BYTES``."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        physical = 4 * 1024 ** 3
    return max(MIN_MAXMEMORY_BYTES, physical // 4)


def start_embedded_redis(data_dir: Path, redis_server_bin: str = "redis-server",
                         startup_timeout: float = 15.0, maxmemory_bytes: int | None = None) -> EmbeddedRedis:
    """Start (or reuse) the embedded Redis for ``data_dir``, with ``maxmemory`` (default:
    :func:`default_maxmemory`) and ``maxmemory-policy volatile-lru``: past it Redis evicts only keys with
    a TTL, which are caches (``server.core.keys.expires``). Call it from the main thread: the
    parent-death signal is tied to the thread that forks the child."""
    maxmemory = maxmemory_bytes or default_maxmemory()
    directory = (data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(directory / "owner.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return _reuse(directory, startup_timeout)
    try:
        binary = shutil.which(redis_server_bin)
        if binary is None:
            raise EmbeddedRedisError(
                f"'{redis_server_bin}' was not found. Install it (Debian: apt-get install redis-server), "
                "set SYNDICATE_REDIS_SERVER to its path, or set REDIS_URL to use an existing Redis.")
        _stop_leftover(directory)
        process, port = _spawn(binary, directory, startup_timeout, maxmemory)
        (directory / "endpoint").write_text(f"{port}\n", encoding="ascii")
        log.info("embedded redis-server pid %d on 127.0.0.1:%d, data in %s, maxmemory %d MB", process.pid, port,
                 directory, maxmemory // (1024 * 1024))
        return EmbeddedRedis(f"redis://127.0.0.1:{port}/0", directory, True, process, lock_fd, maxmemory)
    except BaseException:
        os.close(lock_fd)
        raise


def _spawn(binary: str, directory: Path, startup_timeout: float, maxmemory_bytes: int,
           port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    last_error = ""
    fixed = port
    for _attempt in range(5):
        port = fixed or _free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(directory),
            "--pidfile", str(directory / "redis.pid"),
            "--logfile", str(directory / "redis.log"),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--appendfilename", "appendonly.aof",
            "--save", "",
            "--maxmemory", str(maxmemory_bytes),
            "--maxmemory-policy", "volatile-lru",
        ]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, preexec_fn=_die_with_parent, close_fds=True)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last_error = (process.stderr.read().decode(errors="replace") if process.stderr else "") or \
                    _log_tail(directory)
                break
            if _ping(port):
                if process.stderr:
                    process.stderr.close()
                return process, port
            time.sleep(0.02)
        else:
            process.kill()
            process.wait()
            raise EmbeddedRedisError(f"redis-server did not answer within {startup_timeout:.0f}s; see "
                                     f"{directory / 'redis.log'}")
    raise EmbeddedRedisError(f"redis-server would not start: {last_error.strip()[-300:]}")


def _reuse(directory: Path, timeout: float) -> EmbeddedRedis:
    endpoint = directory / "endpoint"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            port = int(endpoint.read_text(encoding="ascii").strip())
            if _ping(port):
                return EmbeddedRedis(f"redis://127.0.0.1:{port}/0", directory, False)
        time.sleep(0.05)
    raise EmbeddedRedisError(f"another process holds {directory / 'owner.lock'} but its Redis does not answer; "
                             "is a server still starting or stopping?")


def _stop_leftover(directory: Path) -> None:
    """A redis-server still running on our data (its owner died without the parent-death signal
    reaching it) would clash with the new one: stop it cleanly first."""
    pidfile = directory / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        working_dir = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (FileNotFoundError, PermissionError):
        return
    # redis-server changes into its --dir: only a Redis on *our* data is ours to stop (the pid may
    # have been reused by the system's Redis or another checkout's).
    if b"redis-server" not in cmdline or working_dir != directory:
        return
    log.warning("stopping leftover embedded redis-server pid %d", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _log_tail(directory: Path) -> str:
    try:
        return (directory / "redis.log").read_text(errors="replace")[-500:]
    except FileNotFoundError:
        return ""
