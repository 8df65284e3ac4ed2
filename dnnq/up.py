"""`dnnq up`: Redis (embedded unless DNNQ_REDIS_URL), N workers and the API, supervised.

Each child runs in its own session (process group), the embedded Redis too, so a Ctrl-C reaches
only this supervisor, which then stops the API and the workers first (SIGTERM to each child, SIGKILL
to its whole group after a grace period: Celery's prefork children go too) and Redis last: a worker
that shuts down releases its job through Redis. An API process or a worker that dies is restarted,
after a delay that doubles with each recent restart (up to RESTART_BACKOFF_MAX_S). A worker that
dies MAX_RESTARTS times within RESTART_WINDOW_S is a crash loop (a broken setting, say), and then
everything stops; an API process is always restarted, so that no request that crashes one can take
the service down. If Redis dies, everything stops; `dnnq up` then exits non-zero with a message.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dnnq.client import CliError

__all__ = ["Child", "api_keys_configured", "check_bind_allowed", "is_loopback", "run_up"]

MAX_RESTARTS = 5  # per worker per RESTART_WINDOW_S; beyond that it is a crash loop
RESTART_WINDOW_S = 60.0
RESTART_BACKOFF_S = 1.0  # the second restart within the window waits this long, each later one twice as long
RESTART_BACKOFF_MAX_S = 30.0
READY_TIMEOUT_S = 60.0
WORKER_NICENESS = 10  # workers' CPU priority below the API's (see _run)
_PR_SET_PDEATHSIG = 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys_configured(env=None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("DNNQ_API_KEYS", "").strip() or env.get("DNNQ_API_KEYS_FILE", "").strip())


def check_bind_allowed(host: str, allow_remote_without_keys: bool, env=None) -> str | None:
    """Refuse a non-loopback address without API keys; returns a note to print, or None."""
    if api_keys_configured(env):
        return None
    if is_loopback(host):
        return f"no API keys set (DNNQ_API_KEYS / DNNQ_API_KEYS_FILE): listening on {host} only"
    if not allow_remote_without_keys:
        raise CliError(
            f"refusing to listen on {host} without API keys: anyone who can reach it could use it. "
            "Set DNNQ_API_KEYS (e.g. 'alice:SECRET') or DNNQ_API_KEYS_FILE, or pass "
            "--allow-remote-without-keys",
            exit_code=2,
        )
    return f"WARNING: listening on {host} WITHOUT API keys (--allow-remote-without-keys)"


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pass --port N or stop what uses it"
            ) from None


def _check_redis(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise CliError(
            f"cannot reach Redis at {url} (DNNQ_REDIS_URL): {exc}; unset DNNQ_REDIS_URL to use an embedded Redis"
        ) from None


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `dnnq up` itself is killed (-9), so nothing is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _lower_autogroup_priority(niceness: int) -> None:
    """Give this process's session the nice value too. Linux with autogroups (the desktop default,
    /proc/sys/kernel/sched_autogroup_enabled) shares the CPU fairly between sessions first and only
    then by nice value inside each; every child starts its own session, so a plain os.nice() changed
    nothing against the API's sessions (measured: bench.load's first 20 submits at 50-60 ms while
    both workers trained at full share). Writing the session's nice needs no privilege when it only
    lowers the priority. Runs in the child between fork and exec; no autogroups: nothing to do."""
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
    env: dict
    proc: subprocess.Popen | None = None
    restarts: deque = field(default_factory=deque)
    pass_fds: tuple[int, ...] = ()  # descriptors the child inherits (its listening socket)
    niceness: int = 0  # added to the child's nice value (lower CPU priority), inherited by its children
    # For a child handed its listening socket (`--fd N` in argv): a new socket for a restart, since
    # this process closed the first one once the child held it.
    rebind: Callable[[], socket.socket] | None = None
    restart_at: float | None = None  # monotonic time of a restart waiting out its back-off
    max_restarts: int | None = MAX_RESTARTS  # within RESTART_WINDOW_S; None: restart it however often it dies

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

    def start(self) -> None:
        def before_exec() -> None:
            if sys.platform.startswith("linux"):
                _die_with_parent()
            if self.niceness:
                os.nice(self.niceness)
                _lower_autogroup_priority(self.niceness)

        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            start_new_session=True,
            pass_fds=self.pass_fds,
            preexec_fn=before_exec if sys.platform.startswith("linux") or self.niceness else None,
        )

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


def stop_children(children: list[Child], grace_s: float) -> None:
    """SIGTERM each child, wait up to grace_s for their groups to empty, then SIGKILL what is left.

    SIGTERM goes to the child alone, not its group: Celery's main process then makes a warm
    shutdown and tells its training child, which stops at the end of its epoch, checkpoints and
    releases the job (queued again at once, its attempt not spent: workers/runner.py). A job whose
    epoch outlasts the grace period is killed with its worker, keeps its last checkpoint and lease,
    and resumes when the lease expires (docs/deploy.md).
    """
    for child in children:
        if child.exit_code() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(c.group_alive() for c in children):
        time.sleep(0.1)
    for child in children:
        if child.group_alive():
            print(f"dnnq: {child.name} did not stop within {grace_s:g}s; killing it", file=sys.stderr)
            child.signal_group(signal.SIGKILL)
    for child in children:
        if child.proc is not None:
            child.proc.wait()


class _RedisWatch:
    """Is the embedded Redis alive? Its process if the handle exposes one, else PING."""

    def __init__(self, handle, url: str):
        self.handle = handle
        self.url = url
        self.failures = 0

    def alive(self) -> bool:
        for attr in ("process", "proc", "_proc", "popen"):
            proc = getattr(self.handle, attr, None)
            if proc is not None and hasattr(proc, "poll"):
                return proc.poll() is None
        import redis

        try:
            redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1).ping()
            self.failures = 0
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self.failures += 1
        return self.failures < 3


def _wait_ready(base_url: str, apis: list[Child], stop: threading.Event) -> bool:
    """True once /healthz answers 200 as many times in a row as there are API processes (with
    SO_REUSEPORT each new connection may reach another one), all of them still running."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    answered = 0
    while time.monotonic() < deadline and not stop.is_set():
        if any(api.exit_code() is not None for api in apis):
            return False
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                answered += 1
                if answered >= len(apis):
                    return True
                continue
            answered = 0
        except httpx.TransportError:
            pass
        stop.wait(0.2)
    return False


def run_up(
    host: str,
    port: int,
    data_dir: Path,
    workers: int,
    queues: str,
    allow_remote_without_keys: bool,
    grace_s: float = 10.0,
    api_workers: int = 1,
    access_log: bool = False,
) -> int:
    note = check_bind_allowed(host, allow_remote_without_keys)
    if workers < 1:
        raise CliError("--workers must be at least 1", exit_code=2)
    _check_port_free(host, port)
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    redis_url = os.environ.get("DNNQ_REDIS_URL", "").strip()
    if redis_url:
        _check_redis(redis_url)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(
            host, port, data_dir, workers, queues, note, grace_s, redis_url, stop, received, api_workers, access_log
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe_exit(code: int) -> str:
    """'exited with code 3', or 'was killed by SIGKILL (code -9)' (Popen's negative code)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (code {code})"
        except ValueError:
            return f"was killed by signal {-code} (code {code})"
    return f"exited with code {code}"


def restart_delay(recent: int) -> float:
    """Back-off before a restart, given how many restarts the child had within RESTART_WINDOW_S."""
    return 0.0 if recent == 0 else min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (recent - 1))


def _reuseport_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on host:port with SO_REUSEPORT, one per API process: the kernel spreads
    new connections across them (see dnnq/api_process.py for why not one shared socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CliError(f"cannot listen on {host}:{port} ({exc.strerror}): pass --port N or stop what uses it") from None
    return sockets


def _reuseport_balances() -> bool:
    """Whether the kernel spreads new connections over sockets sharing a port (Linux's SO_REUSEPORT;
    elsewhere the option exists but one socket takes them all)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def default_api_workers() -> int:
    """Two API processes where the kernel spreads connections over their sockets and there are two
    cores, else one. Measured with bench.load (500 submits from 20 clients, 2 workers, this 2-core
    machine): submit p99 40 -> 27 ms and 3,761 -> 6,263 status polls/s, for ~75 MB more."""
    return 2 if _reuseport_balances() and (os.cpu_count() or 1) >= 2 else 1


def _api_env(env: dict, data_dir: Path, api_workers: int) -> dict:
    """The API processes' environment. Several of them share one port, so a /metrics scrape reaches
    any one: each keeps its request histogram in a file under <data-dir>/run/metrics
    (prometheus_client's multiprocess mode) and answers for all (service/routes/metrics.py). The
    files of a previous run are removed: counters start again at zero with the processes."""
    if api_workers <= 1:
        return env
    metrics_dir = data_dir / "run" / "metrics"
    if metrics_dir.exists():
        shutil.rmtree(metrics_dir)
    metrics_dir.mkdir(parents=True)
    return dict(env, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))


def _api_children(host: str, port: int, api_workers: int, access_log: bool, env: dict) -> tuple[list[Child], list]:
    """The API processes, and the listening sockets to close in this process once they are started."""
    if api_workers > 1 and _reuseport_balances():
        sockets = _reuseport_sockets(host, port, api_workers)
        log_flag = ["--access-log"] if access_log else []

        def rebind() -> socket.socket:
            return _reuseport_sockets(host, port, 1)[0]

        return [
            Child(
                f"api {i + 1}",
                [sys.executable, "-m", "dnnq.api_process", "--fd", str(sock.fileno()), *log_flag],
                env,
                pass_fds=(sock.fileno(),),
                rebind=rebind,
                max_restarts=None,
            )
            for i, sock in enumerate(sockets)
        ], sockets
    # One process (or a platform whose SO_REUSEPORT does not balance): uvicorn binds, and with
    # --workers N its processes share that one socket.
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "dnnq.service.app:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(api_workers),
        "--access-log" if access_log else "--no-access-log",
    ]
    return [Child("api", argv, env, max_restarts=None)], []


def _run(
    host, port, data_dir, workers, queues, note, grace_s, redis_url, stop, received, api_workers, access_log
) -> int:
    redis_handle = None
    if redis_url:
        redis_line = f"Redis at {redis_url} (DNNQ_REDIS_URL)"
    else:
        from dnnq.workers.redis_server import RedisNotFound, start_redis

        try:
            redis_handle = start_redis(data_dir / "redis", None)
        except (RedisNotFound, RuntimeError) as exc:
            raise CliError(f"cannot start the embedded Redis: {exc}") from None
        redis_url = redis_handle.url
        redis_line = f"Redis embedded at {redis_url} (AOF in {data_dir / 'redis'})"
    print(f"dnnq: {redis_line}", flush=True)

    env = dict(os.environ, DNNQ_REDIS_URL=redis_url, DNNQ_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    children: list[Child] = []
    exit_code = 0
    try:
        host_name = socket.gethostname()
        # The workers run at a lower CPU priority (nice +WORKER_NICENESS): on one machine they share the
        # cores with the API, whose answers someone is waiting for, while a job only finishes a little
        # later. Training still gets every cycle the API leaves idle.
        worker_children = [
            Child(
                f"worker {i + 1}",
                [sys.executable, "-m", "dnnq.workers"],
                dict(env, DNNQ_QUEUES=queues, DNNQ_WORKER_NAME=f"{host_name}-up{i + 1}"),
                niceness=WORKER_NICENESS,
            )
            for i in range(workers)
        ]
        apis, listening = _api_children(host, port, api_workers, access_log, _api_env(env, data_dir, api_workers))
        children = [*apis, *worker_children]
        for child in children:
            child.start()
        for sock in listening:  # the API processes hold them now; a dead one's socket then leaves the port
            sock.close()
        plural = "s" if workers > 1 else ""
        api_plural = "es" if api_workers > 1 else ""
        print(
            f"dnnq: {workers} worker{plural} (queues {queues}), {api_workers} API process{api_plural}, "
            f"data in {data_dir}",
            flush=True,
        )
        if note:
            print(f"dnnq: {note}", flush=True)

        url_host = f"[{host}]" if ":" in host else host
        base_url = f"http://{url_host}:{port}"
        if not _wait_ready("http://127.0.0.1:%d" % port if host in ("0.0.0.0", "::") else base_url, apis, stop):
            if not stop.is_set():
                code = next((c for c in (api.exit_code() for api in apis) if c is not None), None)
                why = f"exited with code {code}" if code is not None else f"did not answer within {READY_TIMEOUT_S:g}s"
                print(f"dnnq: error: the API {why}; see its messages above", file=sys.stderr)
                exit_code = 1
        else:
            print(
                f"dnnq is up: {base_url} (dashboard), API docs {base_url}/docs; {redis_line}; "
                f"{workers} worker{plural}. Ctrl-C stops everything.",
                flush=True,
            )
            exit_code = _supervise(
                apis, worker_children, _RedisWatch(redis_handle, redis_url) if redis_handle else None, stop
            )
    finally:
        stop_children(children, grace_s)
        if redis_handle is not None:
            redis_handle.stop()
        if received:
            print(f"dnnq: stopped ({signal.Signals(received[0]).name})", file=sys.stderr, flush=True)
    return exit_code


def _supervise(apis: list[Child], workers: list[Child], redis_watch: _RedisWatch | None, stop: threading.Event) -> int:
    """Watch the children until a signal (0), Redis's death or a crash loop (1). A dead API process
    or worker is restarted, after a back-off when it died recently (restart_delay)."""
    while not stop.wait(0.5):
        if redis_watch is not None and not redis_watch.alive():
            if stop.is_set():
                break
            print(
                "dnnq: error: the embedded Redis server died; stopping everything "
                "(job records are in its AOF file: run `dnnq up` again)",
                file=sys.stderr,
                flush=True,
            )
            return 1
        for child in (*apis, *workers):
            if stop.is_set():
                break
            if child.restart_at is not None:
                if time.monotonic() >= child.restart_at:
                    _restart(child)
                continue
            code = child.exit_code()
            if code is None:
                continue
            now = time.monotonic()
            while child.restarts and now - child.restarts[0] > RESTART_WINDOW_S:
                child.restarts.popleft()
            if child.max_restarts is not None and len(child.restarts) >= child.max_restarts:
                print(
                    f"dnnq: error: {child.name} keeps dying (it {describe_exit(code)}; {child.max_restarts} restarts "
                    f"in {RESTART_WINDOW_S:g}s); stopping everything",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            delay = restart_delay(len(child.restarts))
            child.restarts.append(now + delay)
            child.signal_group(signal.SIGKILL)  # leftovers of the dead child's process group
            when = f"in {delay:g}s" if delay else "now"
            print(
                f"dnnq: {child.name} {describe_exit(code)}; restarting it {when} "
                f"(restart {len(child.restarts)} within {RESTART_WINDOW_S:g}s)",
                file=sys.stderr,
                flush=True,
            )
            child.restart_at = now + delay
            if not delay:
                _restart(child)
    return 0


def _restart(child: Child) -> None:
    """Start a dead child again; if that fails (its port taken meanwhile), try again after a back-off."""
    try:
        child.restart()
    except (CliError, OSError) as exc:
        child.restart_at = time.monotonic() + RESTART_BACKOFF_S
        print(
            f"dnnq: could not restart {child.name} ({exc}); trying again in {RESTART_BACKOFF_S:g}s",
            file=sys.stderr,
            flush=True,
        )
