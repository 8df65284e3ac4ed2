"""A weights download the API answers with a redirect (DNNQ_ARTIFACTS_REDIRECT_SECONDS: a 307 to a
presigned URL of its object store): the SDK and the CLI fetch the file there, without the API key, and
check it against the API's sha256, not the store's own ETag.

Two real HTTP servers on loopback stand for the API and the object store; the store records the
headers it was sent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dnnq import Client
from dnnq.aio import AsyncClient
from dnnq.cli import main
from dnnq.errors import IntegrityError

JOB = "ab" * 12
PAYLOAD = b"weights bytes " * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Store(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = PAYLOAD if self.path.startswith("/bucket/good") else b"tampered"
        self.send_response(200)
        self.send_header("ETag", '"an-md5-not-a-sha256"')  # what S3 sends: not the API's digest
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def store() -> Iterator[str]:
    _Store.seen = []
    yield from _serve(_Store)


@pytest.fixture
def api(store) -> Iterator[str]:
    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("Authorization") != "Bearer secret-key":
                self.send_response(401)
                self.end_headers()
            elif self.path.startswith(f"/v1/jobs/{JOB}/weights"):
                which = "good" if "format=npz" in self.path else "bad"
                self.send_response(307)
                self.send_header("Location", f"{store}/bucket/{which}?X-Amz-Signature=abc")
                self.send_header("ETag", f'"{SHA}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                body = json.dumps({"id": JOB, "status": "succeeded"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    yield from _serve(Api)


def test_sdk_follows_the_redirect_without_the_key_and_checks_the_apis_sha256(api, tmp_path):
    with Client(api, "secret-key") as client:
        job = client.job(JOB)
        out = job.download(tmp_path / "w.npz", format="npz")
        assert out.read_bytes() == PAYLOAD
        with pytest.raises(IntegrityError, match="does not match"):
            job.download(tmp_path / "bad.onnx", format="onnx")  # the store sent other bytes
    assert not (tmp_path / "bad.onnx").exists()
    assert len(_Store.seen) == 2
    for headers in _Store.seen:
        assert not {k.lower() for k in headers} & {"authorization", "cookie"}, headers


def test_async_sdk_follows_the_redirect_without_the_key(api, tmp_path):
    async def go() -> bytes:
        async with AsyncClient(api, "secret-key") as client:
            job = await client.job(JOB)
            path = await job.download(tmp_path / "w.npz", format="npz")
            return open(path, "rb").read()

    assert asyncio.run(go()) == PAYLOAD
    assert _Store.seen and all("authorization" not in {k.lower() for k in h} for h in _Store.seen)


def test_cli_download_follows_the_redirect(api, tmp_path, capsys):
    out = tmp_path / "w.npz"
    assert main(["--url", api, "--api-key", "secret-key", "download", JOB, "-o", str(out)]) == 0
    assert out.read_bytes() == PAYLOAD and SHA in capsys.readouterr().out
    assert _Store.seen and "Authorization" not in _Store.seen[0]
