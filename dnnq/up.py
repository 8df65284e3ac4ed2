"""`dnnq up`: Redis (embedded unless DNNQ_REDIS_URL), N workers and the API, supervised.

This module checks what can be checked before anything starts (the bind rule, the port, an external
Redis), builds the children's command lines and environments, and hands them to a ProcessSet
(dnnq/supervisor.py), which starts, watches, restarts and stops them. SIGINT, SIGTERM and SIGHUP
stop everything in order; `dnnq up` exits non-zero with a message when it cannot start, when the
embedded Redis dies or when a worker keeps dying.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from dnnq.client import CliError
from dnnq.supervisor import READY_TIMEOUT_S, Child, ProcessSet

__all__ = [
    "UpOptions",
    "api_children",
    "api_keys_configured",
    "check_bind_allowed",
    "default_api_workers",
    "is_loopback",
    "run_up",
    "shown_url",
]

WORKER_NICENESS = 10  # workers' CPU priority below the API's (see _worker_children)


@dataclass(frozen=True)
class UpOptions:
    """What `dnnq up` was asked for (its command-line options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("dnnq-data")
    workers: int = 1
    queues: str = "default"
    allow_remote_without_keys: bool = False
    grace_s: float = 10.0  # seconds each child gets to stop before SIGKILL
    api_workers: int = 1
    access_log: bool = False

    @property
    def base_url(self) -> str:
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{url_host}:{self.port}"

    @property
    def probe_url(self) -> str:
        """Where this process asks /healthz (a wildcard address is reached through loopback)."""
        return f"http://127.0.0.1:{self.port}" if self.host in ("0.0.0.0", "::") else self.base_url


# -- checks before anything starts ------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether DNNQ_API_KEYS / DNNQ_API_KEYS_FILE give the API at least one key, read as the API reads
    them (service/deps.py): set but holding none (`DNNQ_API_KEYS=","`, an empty file) is an error, not
    "keys on" (the API would run with none, open to anyone)."""
    from dnnq.service.deps import parse_api_keys

    env = os.environ if env is None else env
    try:
        keys = parse_api_keys(env.get("DNNQ_API_KEYS"), env.get("DNNQ_API_KEYS_FILE", "").strip() or None)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    return bool(keys)


def check_bind_allowed(host: str, allow_remote_without_keys: bool, env: Mapping[str, str] | None = None) -> str | None:
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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_taken(host: str, port: int, exc: OSError) -> CliError:
    return CliError(f"cannot listen on {host}:{port} ({exc.strerror}): pass --port N or stop what uses it")


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise _port_taken(host, port, exc) from None


def shown_url(url: str) -> str:
    """A Redis URL fit to print: its password (redis://:PASSWORD@host or user:PASSWORD@host) as '***'."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "(DNNQ_REDIS_URL, not shown)"
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _check_redis(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise CliError(
            f"cannot reach Redis at {shown_url(url)} (DNNQ_REDIS_URL): {exc}; "
            "unset DNNQ_REDIS_URL to use an embedded Redis"
        ) from None


# -- the API processes --------------------------------------------------------------------------
def _reuseport_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on host:port with SO_REUSEPORT, one per API process: the kernel spreads
    new connections across them (see dnnq/api_process.py for why not one shared socket)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _port_taken(host, port, exc) from None
    return sockets


def _reuseport_balances() -> bool:
    """Whether the kernel spreads new connections over sockets sharing a port (Linux's SO_REUSEPORT;
    elsewhere the option exists but one socket takes them all)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def default_api_workers() -> int:
    """Two API processes where the kernel spreads connections over their sockets and there are two
    cores, else one: the second one lowers submit latency under load for ~75 MB (docs/perf.md)."""
    return 2 if _reuseport_balances() and (os.cpu_count() or 1) >= 2 else 1


def _api_env(env: dict[str, str], data_dir: Path, api_workers: int) -> dict[str, str]:
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


def api_children(
    host: str, port: int, api_workers: int, access_log: bool, env: dict[str, str]
) -> tuple[list[Child], list[socket.socket]]:
    """The API processes, and the listening sockets to close in this process once they are started."""
    if api_workers > 1 and _reuseport_balances():
        sockets = _reuseport_sockets(host, port, api_workers)
        log_flag = ["--access-log"] if access_log else []

        def rebind() -> socket.socket:
            return _reuseport_sockets(host, port, 1)[0]

        children = [
            Child(
                f"api {i + 1}",
                [sys.executable, "-m", "dnnq.api_process", "--fd", str(sock.fileno()), *log_flag],
                env,
                pass_fds=(sock.fileno(),),
                rebind=rebind,
                restart_forever=True,
            )
            for i, sock in enumerate(sockets)
        ]
        return children, sockets
    from dnnq.service.http_protocol import HTTP_PROTOCOL

    # One process (or a platform whose SO_REUSEPORT does not balance): uvicorn binds, and with
    # --workers N its processes share that one socket.
    argv = [
        *(sys.executable, "-m", "uvicorn", "--factory", "dnnq.service.app:create_app"),
        *("--host", host, "--port", str(port), "--workers", str(api_workers)),
        "--access-log" if access_log else "--no-access-log",
        *("--http", HTTP_PROTOCOL),  # limits on each request head (service/http_protocol.py)
    ]
    return [Child("api", argv, env, restart_forever=True)], []


def _worker_children(options: UpOptions, env: dict[str, str]) -> list[Child]:
    """The workers run at a lower CPU priority (nice +WORKER_NICENESS): on one machine they share the
    cores with the API, whose answers someone is waiting for, while a job only finishes a little
    later. Training still gets every cycle the API leaves idle."""
    host_name = socket.gethostname()
    return [
        Child(
            f"worker {i + 1}",
            [sys.executable, "-m", "dnnq.workers"],
            dict(env, DNNQ_QUEUES=options.queues, DNNQ_WORKER_NAME=f"{host_name}-up{i + 1}"),
            niceness=WORKER_NICENESS,
        )
        for i in range(options.workers)
    ]


# -- running ----------------------------------------------------------------------------------
class StopSignals:
    """While installed, SIGINT, SIGTERM and SIGHUP set `event`; `first` is the first one received."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.first: signal.Signals | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.first is None:
            self.first = signal.Signals(signum)
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _say(message: str, *, error: bool = False) -> None:
    print(f"dnnq: {message}", file=sys.stderr if error else sys.stdout, flush=True)


def run_up(options: UpOptions) -> int:
    """Start everything, watch it until a signal or a fatal failure, stop it; the exit code."""
    note = check_bind_allowed(options.host, options.allow_remote_without_keys)
    if options.workers < 1:
        raise CliError("--workers must be at least 1", exit_code=2)
    _check_port_free(options.host, options.port)
    data_dir = options.data_dir.expanduser().resolve()
    # new: this user's only (datasets, weights, the Redis AOF and its password); an existing one keeps its mode
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = dataclasses.replace(options, data_dir=data_dir)

    redis_url = os.environ.get("DNNQ_REDIS_URL", "").strip()
    if redis_url:
        _check_redis(redis_url)
    with StopSignals().installed() as signals:
        return _run(options, note, redis_url, signals)


def _start_redis(options: UpOptions, redis_url: str, signals: StopSignals) -> tuple[ProcessSet, str]:
    """The process set, with an embedded Redis unless `redis_url` names one; the line that says which."""
    if redis_url:
        return ProcessSet(signals.event), f"Redis at {shown_url(redis_url)} (DNNQ_REDIS_URL)"
    from dnnq.workers.redis_server import RedisNotFound, start_redis

    try:
        redis = start_redis(options.data_dir / "redis", None)
    except (RedisNotFound, RuntimeError) as exc:
        raise CliError(f"cannot start the embedded Redis: {exc}") from None
    where = options.data_dir / "redis"
    return ProcessSet(signals.event, redis), (
        f"Redis embedded at {redis.shown_url} (password in {where / 'password'}, AOF in {where})"
    )


def _run(options: UpOptions, note: str | None, redis_url: str, signals: StopSignals) -> int:
    processes, redis_line = _start_redis(options, redis_url, signals)
    _say(redis_line)
    if processes.redis is not None:
        redis_url = processes.redis.url
    env = dict(os.environ, DNNQ_REDIS_URL=redis_url, DNNQ_DATA_DIR=str(options.data_dir), PYTHONUNBUFFERED="1")
    exit_code = 0
    try:
        processes.add_workers(_worker_children(options, env))
        api_env = _api_env(env, options.data_dir, options.api_workers)
        processes.add_apis(*api_children(options.host, options.port, options.api_workers, options.access_log, api_env))
        processes.start()
        workers = f"{options.workers} worker{'s' if options.workers > 1 else ''}"
        api_processes = f"{options.api_workers} API process{'es' if options.api_workers > 1 else ''}"
        _say(f"{workers} (queues {options.queues}), {api_processes}, data in {options.data_dir}")
        if note:
            _say(note)
        if processes.wait_ready(options.probe_url):
            base_url = options.base_url
            print(
                f"dnnq is up: {base_url} (dashboard), API docs {base_url}/docs; {redis_line}; "
                f"{workers}. Ctrl-C stops everything.",
                flush=True,
            )
            exit_code = processes.watch()
        elif not signals.event.is_set():
            code = processes.dead_api_code()
            why = f"exited with code {code}" if code is not None else f"did not answer within {READY_TIMEOUT_S:g}s"
            _say(f"error: the API {why}; see its messages above", error=True)
            exit_code = 1
    finally:
        processes.stop(options.grace_s)
        if signals.first is not None:
            _say(f"stopped ({signals.first.name})", error=True)
    return exit_code
