"""The process set of `dnnq up`: Redis, the API processes and the workers, started, watched and stopped.

Each child runs in its own session (process group), the embedded Redis too, so a Ctrl-C reaches
only the supervisor, which then stops the API and the workers first (SIGTERM to each child, SIGKILL
to its whole group after a grace period: Celery's prefork children go too) and Redis last: a worker
that shuts down releases its job through Redis. An API process or a worker that dies is restarted,
after a delay that doubles with each recent restart (RestartPolicy). A worker that dies
`max_restarts` times within `window_s` is a crash loop (a broken setting, say), and then everything
stops; an API process is always restarted, so that no request that crashes one can take the service
down. If the embedded Redis dies, everything stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from dnnq.client import CliError

if TYPE_CHECKING:
    from dnnq.workers.redis_server import RedisProcess

__all__ = [
    "MAX_RESTARTS",
    "READY_TIMEOUT_S",
    "RESTART_BACKOFF_MAX_S",
    "RESTART_BACKOFF_S",
    "RESTART_WINDOW_S",
    "Child",
    "ProcessSet",
    "RestartPolicy",
    "describe_exit",
    "stop_children",
]

MAX_RESTARTS = 5  # per worker per RESTART_WINDOW_S; beyond that it is a crash loop
RESTART_WINDOW_S = 60.0
RESTART_BACKOFF_S = 1.0  # the second restart within the window waits this long, each later one twice as long
RESTART_BACKOFF_MAX_S = 30.0
READY_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RestartPolicy:
    """How often a dead child is restarted, and how long each restart waits."""

    max_restarts: int = MAX_RESTARTS  # within window_s, for a child that may give up (a worker)
    window_s: float = RESTART_WINDOW_S
    backoff_s: float = RESTART_BACKOFF_S
    backoff_max_s: float = RESTART_BACKOFF_MAX_S

    def delay(self, recent: int) -> float:
        """Back-off before a restart, given how many restarts the child had within window_s."""
        return 0.0 if recent == 0 else min(self.backoff_max_s, self.backoff_s * 2 ** (recent - 1))


def describe_exit(code: int) -> str:
    """'exited with code 3', or 'was killed by SIGKILL (code -9)' (Popen's negative code)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (code {code})"
        except ValueError:
            return f"was killed by signal {-code} (code {code})"
    return f"exited with code {code}"


def _say(message: str) -> None:
    print(f"dnnq: {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `dnnq up` itself is killed (-9), so nothing is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _lower_autogroup_priority(niceness: int) -> None:
    """Give this process's session the nice value too. Linux with autogroups (the desktop default,
    /proc/sys/kernel/sched_autogroup_enabled) shares the CPU fairly between sessions first and only
    then by nice value inside each; every child starts its own session, so a plain os.nice() leaves
    it as fast as the API's sessions (docs/perf.md, "Launcher"). Writing the session's nice needs no
    privilege when it only lowers the priority. Runs in the child between fork and exec; no
    autogroups: nothing to do."""
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(niceness))
    except OSError:
        pass


@dataclass
class Child:
    """One supervised process, alone in its process group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)  # monotonic times of recent restarts
    pass_fds: tuple[int, ...] = ()  # descriptors the child inherits (its listening socket)
    niceness: int = 0  # added to the child's nice value (lower CPU priority), inherited by its children
    # For a child handed its listening socket (`--fd N` in argv): a new socket for a restart, since
    # the supervisor closed the first one once the child held it.
    rebind: Callable[[], socket.socket] | None = None
    restart_at: float | None = None  # monotonic time of a restart waiting out its back-off
    restart_forever: bool = False  # an API process: never a crash loop

    def start(self) -> None:
        linux = sys.platform.startswith("linux")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            start_new_session=True,
            pass_fds=self.pass_fds,
            preexec_fn=self._before_exec if linux or self.niceness else None,
        )

    def _before_exec(self) -> None:
        if sys.platform.startswith("linux"):
            _die_with_parent()
        if self.niceness:
            os.nice(self.niceness)
            _lower_autogroup_priority(self.niceness)

    def restart(self) -> None:
        """Start again; with `rebind`, on a fresh socket passed under the same `--fd` option."""
        self.restart_at = None
        if self.rebind is None:
            self.start()
            return
        sock = self.rebind()
        try:
            fd = sock.fileno()
            i = self.argv.index("--fd")
            self.argv = [*self.argv[: i + 1], str(fd), *self.argv[i + 2 :]]
            self.pass_fds = (fd,)
            self.start()
        finally:
            sock.close()  # the child holds it now

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal_group(self, sig: int) -> bool:
        """Signal every process of the group; False when the group is empty."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        self.proc.poll()  # reap the leader so that it does not linger as a zombie
        return self.signal_group(0)


def stop_children(children: Sequence[Child], grace_s: float) -> None:
    """SIGTERM each child, wait up to grace_s for their groups to empty, then SIGKILL what is left.

    SIGTERM goes to the child alone, not its group: Celery's main process then makes a warm
    shutdown and tells its training child, which stops at the end of its epoch, checkpoints and
    releases the job (queued again at once, its attempt not spent: workers/runner.py). A job whose
    epoch outlasts the grace period is killed with its worker, keeps its last checkpoint and lease,
    and resumes when the lease expires (docs/deploy.md).
    """
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(c.group_alive() for c in children):
        time.sleep(0.1)
    for child in children:
        if child.group_alive():
            _say(f"{child.name} did not stop within {grace_s:g}s; killing it")
            child.signal_group(signal.SIGKILL)
    for child in children:
        if child.proc is not None:
            child.proc.wait()


class ProcessSet:
    """The children of one `dnnq up`: an embedded Redis (or none, for an external one), the API
    processes and the workers. start() them, watch() until a signal or a fatal death, stop() in
    order: the API and the workers first, Redis last."""

    def __init__(
        self, stop: threading.Event, redis: RedisProcess | None = None, policy: RestartPolicy | None = None
    ) -> None:
        self.stop_requested = stop
        self.redis = redis
        self.policy = policy or RestartPolicy()
        self.apis: list[Child] = []
        self.workers: list[Child] = []
        self._listening: list[socket.socket] = []  # the API processes' sockets, closed here once they hold them

    @property
    def children(self) -> list[Child]:
        return [*self.apis, *self.workers]

    def add_apis(self, apis: list[Child], listening: list[socket.socket]) -> None:
        self.apis += apis
        self._listening += listening

    def add_workers(self, workers: list[Child]) -> None:
        self.workers += workers

    def start(self) -> None:
        for child in self.children:
            child.start()
        for sock in self._listening:  # the API processes hold them now; a dead one's socket then leaves the port
            sock.close()
        self._listening = []

    def wait_ready(self, base_url: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """True once /healthz answers 200 as many times in a row as there are API processes (with
        SO_REUSEPORT each new connection may reach another one), all of them still running."""
        deadline = time.monotonic() + timeout_s
        answered = 0
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if self.dead_api_code() is not None:
                return False
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                    answered += 1
                    if answered >= len(self.apis):
                        return True
                    continue
                answered = 0
            except httpx.TransportError:
                pass
            self.stop_requested.wait(0.2)
        return False

    def dead_api_code(self) -> int | None:
        """The exit code of an API process that is no longer running, if any."""
        return next((c for c in (api.exit_code() for api in self.apis) if c is not None), None)

    def watch(self) -> int:
        """Watch the children until a signal (0), Redis's death or a crash loop (1). A dead API process
        or worker is restarted, after a back-off when it died recently (RestartPolicy.delay)."""
        while not self.stop_requested.wait(0.5):
            if self.redis is not None and self.redis.proc.poll() is not None:
                if self.stop_requested.is_set():
                    break
                _say(
                    "error: the embedded Redis server died; stopping everything "
                    "(job records are in its AOF file: run `dnnq up` again)"
                )
                return 1
            for child in self.children:
                if self.stop_requested.is_set():
                    break
                if not self._tend(child):
                    return 1
        return 0

    def _tend(self, child: Child) -> bool:
        """Restart `child` if it is dead or its back-off is over; False for a crash loop."""
        if child.restart_at is not None:
            if time.monotonic() >= child.restart_at:
                self._restart(child)
            return True
        code = child.exit_code()
        if code is None:
            return True
        now = time.monotonic()
        policy = self.policy
        while child.restarts and now - child.restarts[0] > policy.window_s:
            child.restarts.popleft()
        if not child.restart_forever and len(child.restarts) >= policy.max_restarts:
            _say(
                f"error: {child.name} keeps dying (it {describe_exit(code)}; {policy.max_restarts} restarts "
                f"in {policy.window_s:g}s); stopping everything"
            )
            return False
        delay = policy.delay(len(child.restarts))
        child.restarts.append(now + delay)
        child.signal_group(signal.SIGKILL)  # leftovers of the dead child's process group
        when = f"in {delay:g}s" if delay else "now"
        _say(
            f"{child.name} {describe_exit(code)}; restarting it {when} "
            f"(restart {len(child.restarts)} within {policy.window_s:g}s)"
        )
        child.restart_at = now + delay
        if not delay:
            self._restart(child)
        return True

    def _restart(self, child: Child) -> None:
        """Start a dead child again; if that fails (its port taken meanwhile), try again after a back-off."""
        try:
            child.restart()
        except (CliError, OSError) as exc:
            child.restart_at = time.monotonic() + self.policy.backoff_s
            _say(f"could not restart {child.name} ({exc}); trying again in {self.policy.backoff_s:g}s")

    def stop(self, grace_s: float) -> None:
        """The API processes and the workers (each given grace_s), then Redis: a worker that shuts
        down releases its job through Redis."""
        for sock in self._listening:
            sock.close()
        self._listening = []
        try:
            stop_children(self.children, grace_s)
        finally:
            if self.redis is not None:
                self.redis.stop()
