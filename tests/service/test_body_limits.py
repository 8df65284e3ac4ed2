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
