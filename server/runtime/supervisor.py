"""Many processes per host: the supervisor of ``syndicate serve --processes N`` and ``syndicate worker
--processes N``.

One supervisor process runs N children (each an ordinary ``syndicate serve`` or ``syndicate worker``,
told by its command line that it is one slot of a supervisor's) and does only this:

- **The port.** For ``serve``, before any child starts, it binds one listening socket per slot, all on
  the same address and port with ``SO_REUSEPORT`` (the kernel spreads new connections over them by a
  hash of the client's address and port), and keeps them open for its whole life. Slot *i*'s child gets
  slot *i*'s socket (inherited, its descriptor number on the command line) and serves it with aiohttp's
  ``web.SockSite``. So the port never stops listening, and a connection that arrives while a slot's
  child is down waits in that socket's backlog for the replacement instead of being refused.
- **The embedded Redis.** With no ``REDIS_URL`` the supervisor starts the embedded ``redis-server`` (and
  holds its lock) before any child, and restarts it if it dies; every child finds the lock taken and
  connects to it (:mod:`server.core.embedded_redis`), so there is only ever one owner.
- **Crashes.** A child that exits while the supervisor is not stopping (any status, any signal, a
  SIGKILL included) is started again after a pause that doubles from 0.5 s up to 30 s; a child that
  ran for :data:`STABLE_SECONDS` starts its slot's count again. A slot that failed
  :data:`MAX_FAILURES` times in a row, each time sooner than :data:`STABLE_SECONDS` after it started,
  makes the supervisor give up: it stops the other children (gracefully, as below) and exits 1.
- **Stopping.** SIGTERM (or SIGINT) is forwarded to every child as SIGTERM: each stops accepting,
  lets the requests in flight finish, stops its jobs (push deliveries in flight finish, receipts and
  ledger lines are flushed) and exits 0. A child still running after :data:`DRAIN_SECONDS` is killed.
  The supervisor exits 0 when every child exited 0 (or was stopped by the SIGTERM before it had
  started), else 1.

Every child is started with ``PR_SET_PDEATHSIG`` (SIGTERM): if the supervisor itself is killed, its
children drain and stop rather than serve on unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType

from server.core.embedded_redis import EmbeddedRedis, EmbeddedRedisError, start_embedded_redis

log = logging.getLogger("syndicate.supervisor")

FIRST_RESTART_SECONDS = 0.5
LONGEST_RESTART_SECONDS = 30.0
STABLE_SECONDS = 10.0  # a child that ran this long was not crashing at start-up
MAX_FAILURES = 5  # in a row, per slot, each sooner than STABLE_SECONDS after its start: give up
DRAIN_SECONDS = 75.0  # above aiohttp's own 60 s for the requests in flight
LISTEN_BACKLOG = 1024
_TICK_SECONDS = 0.05
_PR_SET_PDEATHSIG = 1


class ChildKind(StrEnum):
    SERVER = "server"
    WORKER = "worker"


class SupervisorError(RuntimeError):
    """The supervisor could not start (the port is taken, say); the message says what failed."""


@dataclass(slots=True)
class Slot:
    """One child's place: its socket (servers), its process while it runs, and its crash record."""

    number: int
    sock: socket.socket | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # quick failures in a row
    restart_at: float | None = None  # when to start it again, after a crash


@dataclass(slots=True)
class Supervisor:
    """N children of one kind; ``command(slot, fd)`` is a child's command line (``fd``: its listening
    socket's descriptor, or None for workers)."""

    kind: ChildKind
    processes: int
    command: Callable[[int, int | None], Sequence[str]]
    data_dir: Path
    embedded_redis: bool  # no REDIS_URL: this process owns the embedded Redis
    redis_server_bin: str = "redis-server"
    host: str = "127.0.0.1"
    port: int = 0
    slots: list[Slot] = field(default_factory=list)
    embedded: EmbeddedRedis | None = None
    _stopping: bool = False

    def run(self, on_started: Callable[[Supervisor], None] | None = None) -> int:
        """Start everything, supervise until stopped or given up, and return the exit status."""
        previous = {signum: signal.signal(signum, self._stop_requested) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.slots = [Slot(number) for number in range(self.processes)]
            if self.kind is ChildKind.SERVER:
                self._bind()
            if self.embedded_redis:
                self.embedded = start_embedded_redis(self.data_dir, self.redis_server_bin)
            for slot in self.slots:
                self._start(slot)
            if on_started is not None:
                on_started(self)
            return self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._kill_leftovers()
            for slot in self.slots:
                if slot.sock is not None:
                    slot.sock.close()
            if self.embedded is not None:
                self.embedded.stop()

    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self.slots if slot.process is not None]

    def _stop_requested(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("%s: stopping %d %s processes (draining)", signal.Signals(signum).name, self.processes,
                     self.kind)
        self._stopping = True

    def _bind(self) -> None:
        """One listening socket per slot, all on one port (the first bind picks it when the port is 0)."""
        try:
            infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise SupervisorError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        if not infos:
            raise SupervisorError(f"cannot listen on {self.host}:{self.port}: no address")
        family, kind, proto, _name, address = infos[0]
        if self.port:
            # SO_REUSEPORT would let these sockets join another server's on the port: a plain bind
            # first says whether the port is taken.
            probe = socket.socket(family, kind, proto)
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address[0], self.port, *address[2:]))
            except OSError as exc:
                raise SupervisorError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
            finally:
                probe.close()
        for slot in self.slots:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], self.port, *address[2:]))
                sock.listen(LISTEN_BACKLOG)
            except OSError as exc:
                sock.close()
                raise SupervisorError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
            self.port = sock.getsockname()[1]
            slot.sock = sock

    def _start(self, slot: Slot) -> None:
        fd = slot.sock.fileno() if slot.sock is not None else None
        argv = list(self.command(slot.number, fd))
        slot.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=() if fd is None else (fd,),
                                        preexec_fn=_die_with_parent)
        slot.started_at, slot.restart_at = time.monotonic(), None
        log.info("%s %d started: pid %d", self.kind, slot.number, slot.process.pid)

    def _supervise(self) -> int:
        while True:
            if self._stopping:
                return self._drain()
            now = time.monotonic()
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    if self._crashed(slot, now):
                        log.error("%s %d failed %d times in a row within %.0f s of starting: giving up",
                                  self.kind, slot.number, slot.failures, STABLE_SECONDS)
                        self._stopping = True
                        self._drain()
                        return 1
                elif slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
            self._keep_embedded_redis()
            time.sleep(_TICK_SECONDS)

    def _crashed(self, slot: Slot, now: float) -> bool:
        """Note a child's exit and schedule its restart; True when the slot has failed too often."""
        assert slot.process is not None
        status, pid = slot.process.returncode, slot.process.pid
        ran = now - slot.started_at
        slot.process = None
        slot.failures = slot.failures + 1 if ran < STABLE_SECONDS else 1
        if slot.failures >= MAX_FAILURES:
            return True
        pause = min(LONGEST_RESTART_SECONDS, FIRST_RESTART_SECONDS * 2 ** (slot.failures - 1))
        slot.restart_at = now + pause
        log.error("%s %d (pid %d) exited (%s) after %.1f s; starting it again in %.1f s",
                  self.kind, slot.number, pid, _describe(status), ran, pause)
        return False

    def _keep_embedded_redis(self) -> None:
        embedded = self.embedded
        if embedded is None or embedded.running:
            return
        try:
            embedded.restart(self.redis_server_bin)
        except EmbeddedRedisError as exc:
            log.error("the embedded redis-server died and could not be started again: %s", exc)

    def _drain(self) -> int:
        """SIGTERM to every child; wait for them (then SIGKILL); 0 when every one exited 0."""
        running = [slot.process for slot in self.slots if slot.process is not None and slot.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for slot in self.slots:  # a drained child's socket is closed in it; no new connection waits here
            if slot.sock is not None:
                slot.sock.close()
                slot.sock = None
        deadline = time.monotonic() + DRAIN_SECONDS
        statuses = []
        for process in running:
            try:
                statuses.append(process.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("%s pid %d did not stop within %.0f s; killing it", self.kind, process.pid, DRAIN_SECONDS)
                process.kill()
                statuses.append(process.wait())
        for slot in self.slots:
            slot.process = None
        # A child the SIGTERM met while it was still starting (before it took over the signal) had
        # nothing in flight: stopped by the signal is as clean as exiting 0.
        failed = [status for status in statuses if status not in (0, -signal.SIGTERM)]
        if failed:
            log.error("%d of %d %s processes did not exit cleanly", len(failed), len(statuses), self.kind)
        return 1 if failed else 0

    def _kill_leftovers(self) -> None:
        """After an error in the supervisor itself: no child outlives it (each by its own pid)."""
        for slot in self.slots:
            process = slot.process
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            slot.process = None


def _describe(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-status).name
        return f"signal {-status}"
    return f"status {status}"


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
