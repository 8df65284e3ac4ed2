"""What one request may make the API process hold. The body limit and the route judge the same
Content-Type: two Content-Type headers (the middleware read the last, FastAPI the first) let a JSON
body of up to DNNQ_MAX_UPLOAD_BYTES reach json.loads in the API process; a multipart Content-Type on a
JSON route had it buffered whole in memory. And datasets are parsed or generated a few at a time."""

from __future__ import annotations

import pytest

from tests.service.test_api import assert_problem, make_client

BIG = b'{"inputs": [' + b",".join([b"[0,0]"] * 400_000) + b"]}"  # ~2.3 MiB: over the 1 MiB JSON limit


@pytest.fixture
def small_client(api_settings):
    with make_client(api_settings, max_upload_bytes=8 * 1024 * 1024) as c:
        yield c


@pytest.mark.parametrize(
    "path", ["/v1/jobs/0123456789abcdef0123456789abcdef/predict", "/v1/jobs", "/v1/datasets/synthetic"]
)
def test_two_content_types_are_refused_before_the_body_is_read(small_client, path):
    headers = [("content-type", "application/json"), ("content-type", "multipart/form-data; boundary=x")]
    resp = small_client.post(path, content=BIG, headers=headers)
    assert resp.status_code in (400, 413), resp.text
    assert_problem(resp, resp.status_code)


@pytest.mark.parametrize("path", ["/v1/jobs/0123456789abcdef0123456789abcdef/predict", "/v1/jobs", "/v1/sweeps"])
def test_multipart_on_a_json_route_has_the_json_limit(small_client, path):
    resp = small_client.post(
        path, content=b"-" * (2 * 1024 * 1024), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert_problem(resp, 413, "DNNQ_MAX_JSON_BODY_BYTES")


def test_an_upload_still_has_the_upload_limit(small_client):
    import io

    import numpy as np

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, X=rng.normal(size=(20_000, 10)), Y=(rng.normal(size=20_000) > 0).astype(int))  # ~1.8 MiB
    resp = small_client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())})
    assert resp.status_code == 201, resp.text


def test_datasets_past_the_parse_slots_wait_then_get_a_503(api_settings, monkeypatch):
    """Each parse (a child with its memory limit) or generation takes one of DNNQ_MAX_CONCURRENT_PARSES
    slots; past them a request waits, then gets a 503 with Retry-After, and nothing is stored."""
    import io

    import numpy as np

    from dnnq.service.routes import datasets as route

    monkeypatch.setattr(route, "SLOT_WAIT_SECONDS", 0.2)
    buf = io.BytesIO()
    np.savez(buf, X=np.ones((4, 2)), Y=np.arange(4) % 2)
    synthetic = {"name": "moons", "n_samples": 50}
    with make_client(api_settings, max_concurrent_parses=1) as c:
        slots = c.app.state.parse_slots
        assert slots.acquire(timeout=1)  # another request is parsing
        try:
            for resp in (
                c.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}),
                c.post("/v1/datasets/synthetic", json=synthetic),
            ):
                assert_problem(resp, 503, "DNNQ_MAX_CONCURRENT_PARSES")
                assert resp.headers["retry-after"] == "5"
            assert c.get("/v1/datasets").json()["total"] == 0
        finally:
            slots.release()
        assert c.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).status_code == 201
        assert c.post("/v1/datasets/synthetic", json=synthetic).status_code == 201


def test_a_tenants_datasets_stop_at_its_quota_with_a_413_that_says_how_much_is_used(api_settings, store):
    """DNNQ_MAX_DATASET_BYTES_PER_TENANT: the stored sizes of one key's datasets, summed. An upload past it
    is a 413 and nothing of it is kept; deleting a dataset makes room; another key has its own quota."""
    import io

    import numpy as np

    def npz(seed: int) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, X=np.random.default_rng(seed).normal(size=(200, 8)), Y=np.arange(200) % 2)
        return buf.getvalue()

    alice, bob = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    with make_client(api_settings, api_keys="alice:key-a,bob:key-b", max_dataset_bytes_per_tenant=40_000) as c:
        first = c.post("/v1/datasets", files={"file": ("a.npz", npz(0))}, headers=alice)
        assert first.status_code == 201, first.text
        size = first.json()["size_bytes"]
        assert 13_334 < size <= 20_000  # two fit under the quota, three do not
        assert c.post("/v1/datasets", files={"file": ("b.npz", npz(1))}, headers=alice).status_code == 201
        over = c.post("/v1/datasets", files={"file": ("c.npz", npz(2))}, headers=alice)
        assert_problem(over, 413, "DNNQ_MAX_DATASET_BYTES_PER_TENANT", f"{2 * size} bytes are in use")
        assert c.get("/v1/datasets", headers=alice).json()["total"] == 2
        assert c.post("/v1/datasets", files={"file": ("a.npz", npz(0))}, headers=alice).status_code == 200  # the same
        synthetic = c.post("/v1/datasets/synthetic", json={"name": "blobs", "n_samples": 2000}, headers=alice)
        assert_problem(synthetic, 413, "DNNQ_MAX_DATASET_BYTES_PER_TENANT")
        assert c.post("/v1/datasets", files={"file": ("c.npz", npz(2))}, headers=bob).status_code == 201
        assert c.delete(f"/v1/datasets/{first.json()['id']}", headers=alice).status_code == 204
        assert c.post("/v1/datasets", files={"file": ("c.npz", npz(2))}, headers=alice).status_code == 201
