"""Request-level gates (issue 13): the 401 before the body, /metrics for the operator only, and /static
paths that cannot be files answered 404.

In-process (ASGI and TestClient) on the real test Redis, plus one raw-socket test against a real uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from fastapi.testclient import TestClient

from dnnq.service.app import AUTHENTICATED_PREFIX, create_app
from dnnq.service.deps import require_tenant
from tests.service.conftest import start_api

KEYS = "alice:key-a,bob:key-b"
ALICE = {"Authorization": "Bearer key-a"}


def make_client(api_settings, **overrides) -> TestClient:
    return TestClient(create_app(api_settings.model_copy(update=overrides)))


def assert_problem(resp, status: int, *fragments: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and body["type"]
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def call_asgi(app, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, int]:
    """One request straight into the ASGI app; returns (status, body, how many times it called receive)."""
    reads = 0
    sent: dict = {"body": b""}

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent["status"], sent["body"], reads


# --- auth before body -------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, b"Bearer wrong", b"Basic key-a", b"Bearer "])
@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/jobs", "/v1/jobs/" + "ab" * 16 + "/predict"])
def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(api_settings, path, authorization):
    app = create_app(api_settings.model_copy(update={"api_keys": KEYS}))
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"104857600")]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    status, body, reads = call_asgi(app, "POST", path, headers)
    assert status == 401, body
    assert reads == 0
    assert b"API key" in body and b"Authorization: Bearer" in body


def test_a_valid_key_reaches_the_route_and_its_body_is_read(api_settings):
    app = create_app(api_settings.model_copy(update={"api_keys": KEYS}))
    status, body, reads = call_asgi(
        app, "POST", "/v1/jobs", [(b"content-type", b"application/json"), (b"authorization", b"Bearer key-a")]
    )
    assert reads > 0  # (the endless body above then ends as a 413 or a disconnect; either way it was read)
    assert status != 401, body


def test_the_gate_answers_what_the_route_would(api_settings):
    with make_client(api_settings, api_keys=KEYS) as c:
        missing = assert_problem(c.post("/v1/datasets", files={"file": ("d.npz", b"PK")}), 401, "API key missing")
        assert c.get("/v1/datasets").headers["www-authenticate"] == 'Bearer realm="dnnq"'
        invalid = c.post("/v1/jobs", json={"dataset_id": "x"}, headers={"Authorization": "Bearer nope"})
        assert_problem(invalid, 401, "API key invalid")
        assert "invalid_token" in invalid.headers["www-authenticate"]
        assert missing["detail"] == "API key missing: send 'Authorization: Bearer <key>'."
        assert c.get("/v1/datasets", headers=ALICE).status_code == 200


def test_public_routes_stay_open_with_keys(api_settings):
    with make_client(api_settings, api_keys=KEYS) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code in (200, 503)  # no worker here: 503, but not a 401
        assert c.get("/").status_code == 200
        assert c.get("/static/dashboard.js").status_code == 200
        assert c.get("/docs").status_code == 200
        assert c.get("/openapi.json").status_code == 200


def test_readyz_tells_where_the_store_is_only_to_a_key_holder(api_settings):
    """A probe without a key gets the verdict; where the artifacts live (a path, a bucket and endpoint) and
    what the store answered are for API-key holders."""
    with make_client(api_settings, api_keys=KEYS) as c:
        anonymous = c.get("/readyz").json()
        assert anonymous["store"] == {"location": "(hidden: send an API key)", "ok": True}
        assert str(api_settings.data_dir) not in json.dumps(anonymous)
        mine = c.get("/readyz", headers=ALICE).json()
        assert str(api_settings.data_dir) in mine["store"]["location"] and mine["store"]["ok"] is True
        assert mine["status"] == anonymous["status"] and mine["workers"] == anonymous["workers"]


def test_every_tenant_route_is_behind_the_gate_and_only_those():
    """The gate guards the /v1 prefix; the routes' Tenant dependency is the per-route truth. They must agree,
    or a route outside /v1 would take a tenant only after parsing its body."""
    from dnnq.service.routes import dashboard, datasets, health, jobs, metrics

    def needs_tenant(dependant) -> bool:
        return any(d.call is require_tenant or needs_tenant(d) for d in dependant.dependencies)

    routes = [r for module in (dashboard, datasets, health, jobs, metrics) for r in module.router.routes]
    assert len(routes) >= 15
    for route in routes:
        under = route.path == AUTHENTICATED_PREFIX or route.path.startswith(AUTHENTICATED_PREFIX + "/")
        assert needs_tenant(route.dependant) == under, route.path


def test_unauthenticated_upload_gets_its_401_over_a_real_socket_without_sending_the_body(
    redis_client, redis_url, data_dir, tmp_path
):
    """Headers declaring 100 MB, then a few bytes: the 401 comes at once (uvicorn, httptools), while the
    client still owes almost the whole body."""
    proc, base_url, _ = start_api(redis_url, data_dir, tmp_path / "api.log", {"DNNQ_API_KEYS": KEYS})
    try:
        port = int(base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(
                b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            elapsed = time.monotonic() - start
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:300]
        assert b"application/problem+json" in head.lower()
        assert b"API key missing" in body
        assert elapsed < 2.0
    finally:
        proc.kill()
        proc.wait(10)


# --- /metrics ---------------------------------------------------------------------------------


def test_metrics_with_keys_answers_only_the_operator_key(api_settings):
    with make_client(api_settings, api_keys=KEYS, metrics_key="scrape-key") as c:
        ok = c.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        assert ok.status_code == 200 and "dnnq_jobs" in ok.text
        assert_problem(c.get("/metrics", headers=ALICE), 403, "operator's metrics key", "DNNQ_METRICS_KEY")
        missing = assert_problem(c.get("/metrics"), 401, "Metrics key missing")
        assert missing and c.get("/metrics").headers["www-authenticate"].startswith("Bearer")
        assert_problem(c.get("/metrics", headers={"Authorization": "Bearer nope"}), 401, "Metrics key invalid")
        # the operator's key is not a tenant's
        assert_problem(c.get("/v1/jobs", headers={"Authorization": "Bearer scrape-key"}), 401)


def test_metrics_with_keys_and_no_metrics_key_is_closed_to_everyone(api_settings):
    with make_client(api_settings, api_keys=KEYS) as c:
        for headers in ({}, ALICE, {"Authorization": "Bearer key-b"}):
            assert_problem(c.get("/metrics", headers=headers), 403, "/metrics is closed", "Set DNNQ_METRICS_KEY")


def test_metrics_without_keys_is_open(client):
    resp = client.get("/metrics")
    assert resp.status_code == 200 and "dnnq_jobs" in resp.text


# --- /static ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/static/%00",
        "/static/a%00b.js",
        "/static/" + "a" * 300,
        "/static/" + "/".join(["b" * 200] * 30),
        "/static/%ff%fe.js",
        "/static/%c0%af..%c0%afetc/passwd",
        "/static/nope.js",
        "/static/..%2f..%2fsettings.py",
    ],
)
def test_static_paths_that_cannot_be_files_are_404(client, path):
    body = assert_problem(client.get(path), 404, "No static file")
    assert len(body["detail"]) < 200
