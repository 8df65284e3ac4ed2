"""The API on both artifact stores: /readyz reports the store; on S3, a weights download streams or
redirects to a presigned URL (DNNQ_ARTIFACTS_REDIRECT_SECONDS), an upload goes up without the API
holding it, and a store that stops answering makes /readyz say so."""

from __future__ import annotations

import hashlib
import io
import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _train(http: httpx.Client) -> str:
    ds = http.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 300, "seed": 1})
    assert ds.status_code == 201, ds.text
    resp = http.post(
        "/v1/jobs", json={"dataset_id": ds.json()["id"], "model": {"hidden_layers": [4]}, "training": {"epochs": 3}}
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job["error"]
            return job_id
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


@pytest.mark.both_stores
def test_readyz_reports_the_store(live_stack, artifact_backend, data_dir):
    with live_stack.client() as http:
        resp = http.get("/readyz")
    assert resp.status_code == 200, resp.text
    store = resp.json()["store"]
    assert store["ok"] is True
    if artifact_backend == "s3":
        assert store["location"] == f"{live_stack.env['DNNQ_ARTIFACTS_URL']} at {live_stack.env['AWS_ENDPOINT_URL']}"
    else:
        assert store["location"] == str((data_dir / "artifacts").resolve())


def test_weights_redirect_to_a_presigned_url(live_stack_factory, s3_server, s3_env):
    stack = live_stack_factory(env={**s3_env, "DNNQ_ARTIFACTS_REDIRECT_SECONDS": "60"})
    with stack.client() as http:
        job_id = _train(http)
        resp = http.get(f"/v1/jobs/{job_id}/weights", params={"format": "npz"})
        assert resp.status_code == 307
        location = resp.headers["location"]
        assert location.startswith(f"{s3_server.endpoint}/") and "X-Amz-Signature=" in location
        sha = resp.headers["x-checksum-sha256"]
        direct = httpx.get(location)
        assert direct.status_code == 200
        assert hashlib.sha256(direct.content).hexdigest() == sha
        assert http.get(f"/v1/jobs/{job_id}/weights", follow_redirects=True).content == direct.content


def test_weights_stream_through_the_api_by_default_and_readyz_sees_the_store_go(live_stack_factory, s3_env, tmp_path):
    from tests.s3 import TcpProxy

    # a proxy in front of the test's S3 server, so the store can stop answering mid-test
    proxy = TcpProxy(int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    try:
        stack = live_stack_factory(env={**s3_env, "AWS_ENDPOINT_URL": proxy.endpoint})
        with stack.client() as http:
            job_id = _train(http)
            resp = http.get(f"/v1/jobs/{job_id}/weights", params={"format": "npz"})
            assert resp.status_code == 200
            assert resp.headers["content-length"] == str(len(resp.content))
            assert hashlib.sha256(resp.content).hexdigest() == resp.headers["x-checksum-sha256"]
            proxy.down()
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["store"]["ok"] is False
            assert any(
                m.startswith("store: The artifact store") and "does not answer" in m for m in ready.json()["missing"]
            )
            proxy.up()
            assert http.get("/readyz").status_code == 200
    finally:
        proxy.down()


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_an_upload_goes_to_the_store_without_the_api_holding_it(live_stack_factory, s3_env, s3_server):
    stack = live_stack_factory(env=s3_env, workers=0)
    with stack.client(timeout=120) as c:
        warm = c.post("/v1/datasets", files={"file": ("s.npz", _npz(X=np.ones((4, 2)), Y=np.ones(4)))})
        assert warm.status_code == 201  # the fork server, the route and the S3 client are warm
        before = _vm_hwm_kib(stack.api.pid)
        X = np.random.default_rng(0).normal(size=(48 * 1024 * 1024 // 8 // 64, 64))
        body = _npz(X=X, Y=(X[:, 0] > 0).astype(int))
        resp = c.post("/v1/datasets", files={"file": ("big.npz", body)})
        assert resp.status_code == 201, resp.text
        grown_kib = _vm_hwm_kib(stack.api.pid) - before
    key = f"{stack.env['DNNQ_ARTIFACTS_URL'].split('/', 3)[3]}/datasets/{resp.json()['id']}.npz"
    assert key in s3_server.keys(stack.env["DNNQ_ARTIFACTS_URL"].split("/")[2])
    # 48 MiB up in one PUT read from the staged file as it is sent (16 KiB blocks): far less than one copy
    assert grown_kib < 24 * 1024, f"API peak RSS grew {grown_kib} KiB for a 48 MiB upload"


@pytest.mark.both_stores
def test_a_refused_upload_leaves_no_object_and_no_upload_in_progress(
    live_stack_factory, artifact_backend, artifact_env, data_dir, request
):
    stack = live_stack_factory(workers=0)
    X = np.zeros((80_000, 64), dtype=np.float32)  # 20 MB: more than one multipart part
    X[-1, -1] = np.nan  # found by validation after the whole file was parsed
    refused = [
        ("late-nan.npz", _npz(X=X, Y=np.ones(len(X))), "NaN"),
        ("short.npz", _npz(X=np.ones((5, 2)), Y=np.ones(4)), "Y"),
        ("d.npz", b"PK\x03\x04 not a zip", "not a valid zip archive"),
    ]
    with stack.client(timeout=120) as c:
        for name, body, fragment in refused:
            resp = c.post("/v1/datasets", files={"file": (name, body)})
            assert resp.status_code == 422, resp.text
            assert fragment in resp.json()["detail"]
        assert c.get("/v1/datasets").json()["total"] == 0
        ok = c.post("/v1/datasets", files={"file": ("ok.npz", _npz(X=np.ones((4, 2)), Y=np.ones(4)))})
        assert ok.status_code == 201, ok.text
    stored = [f"datasets/{ok.json()['id']}.npz"]  # the accepted upload only
    if artifact_backend == "s3":
        server, (bucket, prefix) = (
            request.getfixturevalue("s3_server"),
            artifact_env["DNNQ_ARTIFACTS_URL"].split("/")[2:4],
        )
        assert server.keys(bucket) == [f"{prefix}/{k}" for k in stored]
        assert server.multipart_uploads(bucket) == []
    else:
        root = data_dir / "artifacts"
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == stored
