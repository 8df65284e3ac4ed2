"""`dnnq api` serves with limits on each request head (service/http_protocol.py): uvicorn's httptools
protocol kept an endless header in memory (an API process grew by every byte sent) and held a
half-sent head open for ever. Against a real `dnnq api` process over raw sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time

import httpx
import pytest

from dnnq.workers.redis_server import free_port
from tests.cli.test_api_worker import _spawn

pytestmark = pytest.mark.e2e


@pytest.fixture
def api(redis_client, redis_url, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
    env.update(
        DNNQ_REDIS_URL=redis_url,
        DNNQ_DATA_DIR=str(data_dir),
        DNNQ_MAX_HEAD_BYTES="16384",
        DNNQ_HEAD_TIMEOUT_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    proc = _spawn(["api", "--port", str(port)], env, tmp_path / "api.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail((tmp_path / "api.log").read_text())
    yield port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def _exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data`, then read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(timeout)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_a_head_over_the_limit_is_a_431_and_the_connection_closes(api):
    huge = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (4 * 1024 * 1024) + b"\r\n\r\n"
    answer = _exchange(api, huge)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"content-type: application/problem+json" in head
    assert "DNNQ_MAX_HEAD_BYTES" in json.loads(body)["detail"]
    many = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(4000))
    assert _exchange(api, many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    # under the limit, and on a kept-alive connection the next request's head is counted afresh
    ok = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 12_000 + b"\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Pad: " + b"a" * 12_000 + b"\r\n\r\n"
    answers = _exchange(api, ok + ok + last)
    assert answers.count(b"HTTP/1.1 200 OK") == 3, answers[:500]


def test_a_head_not_finished_in_time_is_closed(api):
    started = time.monotonic()
    answer = _exchange(api, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", timeout=20)
    assert answer == b"" and time.monotonic() - started < 10  # closed after DNNQ_HEAD_TIMEOUT_SECONDS=2
    started = time.monotonic()
    assert _exchange(api, b"", timeout=20) == b"" and time.monotonic() - started < 10  # a silent connection too
