"""A real S3-speaking server for the tests: moto's standalone server as a child process on loopback
(`python -m moto.server`, from the test extra's moto[server]), and a TCP proxy in front of it that a
test can take down and bring back (an outage without losing the server's in-memory objects)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

from dnnq.workers.redis_server import free_port

ACCESS_KEY = "dnnq-test-key"
SECRET_KEY = "dnnq-test-secret"


class MotoServer:
    """`python -m moto.server` on 127.0.0.1:<free port>; `auth=True` checks credentials (any key is refused)."""

    def __init__(self, log_path: Path, auth: bool = False, wait: float = 60.0) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DNNQ_"))}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # moto's IAM check from the first request
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1.0)
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {wait} s:\n{log_path.read_text()[-3000:]}")

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"dnnq-{uuid.uuid4().hex[:12]}"
        resp = httpx.put(f"{self.endpoint}/{name}", timeout=10.0)  # moto without auth takes an unsigned request
        resp.raise_for_status()
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in the bucket (moto's unsigned ListObjectsV2)."""
        import re

        text = httpx.get(f"{self.endpoint}/{bucket}?list-type=2&max-keys=1000", timeout=10.0).text
        return re.findall(r"<Key>([^<]+)</Key>", text)

    def multipart_uploads(self, bucket: str) -> list[str]:
        """The keys of the bucket's multipart uploads in progress (moto's unsigned ListMultipartUploads)."""
        import re

        resp = httpx.get(f"{self.endpoint}/{bucket}?uploads", timeout=10.0)
        resp.raise_for_status()
        return re.findall(r"<Key>([^<]+)</Key>", resp.text)

    def env(self, bucket: str, prefix: str = "dnnq", endpoint: str | None = None) -> dict[str, str]:
        """What a dnnq process needs to use s3://bucket/prefix on this server."""
        return {
            "DNNQ_ARTIFACTS_URL": f"s3://{bucket}/{prefix}",
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


class TcpProxy:
    """127.0.0.1:<port> forwarding to 127.0.0.1:<target>. down() closes the listener and every open
    connection (clients see refused connections); up() listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
