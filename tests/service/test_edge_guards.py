"""The API's edge (service/guards.py): nosniff on every answer; with API keys off, no DNS-rebound Host
names and no cross-site writes from web pages; keys that are set but hold none refuse to start.

Against a real uvicorn (live_stack_factory: real HTTP, the test Redis), so the Host and Origin headers
are the ones a browser would send, and the in-process app for the many header shapes."""

from __future__ import annotations

import logging

import httpx
import pytest

from dnnq.service.app import create_app


@pytest.fixture
def keyless(live_stack_factory):
    return live_stack_factory(workers=0)


def _csv() -> dict:
    return {"file": ("t.csv", b"a,b,y\n1,2,0\n3,4,1\n", "text/csv")}


# -- nosniff ------------------------------------------------------------------------------------
ANSWERS = [
    ("GET", "/healthz", 200),
    ("GET", "/readyz", 503),  # no worker
    ("GET", "/openapi.json", 200),
    ("GET", "/metrics", 200),
    ("GET", "/v1/jobs", 200),
    ("GET", "/v1/limits", 200),
    ("GET", "/v1/jobs/0123456789abcdef01234567", 404),  # the fast lane's
    ("GET", "/nowhere", 404),  # FastAPI's
    ("POST", "/v1/jobs", 422),
]


def test_every_answer_says_nosniff(keyless):
    with keyless.client() as c:
        for method, path, status in ANSWERS:
            res = c.request(method, path, json={} if method == "POST" else None)
            assert res.status_code == status, (path, res.text)
            assert res.headers.get_list("x-content-type-options") == ["nosniff"], (path, res.headers)


def test_nosniff_with_keys_on_and_on_a_413(api_settings):
    from fastapi.testclient import TestClient

    app = create_app(api_settings.model_copy(update={"api_keys": "alice:k1", "max_json_body_bytes": 10}))
    with TestClient(app) as c:
        unauthorized = c.get("/v1/jobs")
        too_big = c.post("/v1/jobs", content=b"{" + b" " * 100 + b"}", headers={"Authorization": "Bearer k1"})
    assert unauthorized.status_code == 401 and too_big.status_code == 413
    for res in (unauthorized, too_big):
        assert res.headers.get_list("x-content-type-options") == ["nosniff"], res.headers


# -- keys off: Host ------------------------------------------------------------------------------
def test_keyless_api_refuses_a_host_name_a_page_could_rebind(keyless):
    with keyless.client() as c:
        res = c.get("/v1/datasets", headers={"Host": "attacker.example:8000"})
        assert res.status_code == 400, res.text
        assert res.headers["content-type"] == "application/problem+json"
        assert "DNS rebinding" in res.json()["detail"] and "DNNQ_ALLOWED_HOSTS" in res.json()["detail"]
        port = httpx.URL(keyless.base_url).port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "dnnq.localhost", f"[::1]:{port}", "10.1.2.3"):
            assert c.get("/v1/datasets", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_lists_names_and_star_allows_any(live_stack_factory):
    listed = live_stack_factory(env={"DNNQ_ALLOWED_HOSTS": "dnnq.lan, Other.LAN"}, workers=0)
    with listed.client() as c:
        assert c.get("/v1/datasets", headers={"Host": "dnnq.lan:8000"}).status_code == 200
        assert c.get("/v1/datasets", headers={"Host": "other.lan"}).status_code == 200
        assert c.get("/v1/datasets", headers={"Host": "attacker.example"}).status_code == 400
    anything = live_stack_factory(env={"DNNQ_ALLOWED_HOSTS": "*"}, workers=0)
    with anything.client() as c:
        assert c.get("/v1/datasets", headers={"Host": "attacker.example"}).status_code == 200


def test_with_keys_on_any_host_is_answered(live_stack_factory):
    stack = live_stack_factory(env={"DNNQ_API_KEYS": "alice:k1"}, workers=0)
    with stack.client(headers={"Authorization": "Bearer k1"}) as c:
        assert c.get("/v1/datasets", headers={"Host": "dnnq.example.com"}).status_code == 200


# -- keys off: cross-site writes -----------------------------------------------------------------
def test_keyless_api_refuses_a_cross_site_upload_and_cancel(keyless):
    """A page on another site can POST a multipart form or an empty body without a CORS preflight."""
    with keyless.client() as c:
        upload = c.post("/v1/datasets", files=_csv(), headers={"Origin": "http://attacker.example"})
        assert upload.status_code == 403, upload.text
        assert upload.headers["content-type"] == "application/problem+json"
        assert "Cross-site request refused" in upload.json()["detail"], upload.json()
        assert "DNNQ_CORS_ORIGINS" in upload.json()["detail"]
        assert c.get("/v1/datasets").json()["total"] == 0  # nothing was stored
        cancel = c.post("/v1/jobs/0123456789abcdef01234567/cancel", headers={"Origin": "null"})
        assert cancel.status_code == 403, cancel.text
        delete = c.delete("/v1/datasets/0123456789abcdef01234567", headers={"Origin": "https://attacker.example"})
        assert delete.status_code == 403, delete.text


def test_keyless_api_takes_writes_from_its_own_pages_and_from_programs(keyless):
    host = httpx.URL(keyless.base_url).netloc.decode()
    with keyless.client() as c:
        own = c.post("/v1/datasets", files=_csv(), headers={"Origin": f"http://{host}"})
        assert own.status_code == 201, own.text
        # curl, the SDK and the CLI send no Origin
        assert c.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 20}).status_code == 201
        # a cross-site GET is harmless (the browser hides the answer from the page): not refused
        assert c.get("/v1/datasets", headers={"Origin": "http://attacker.example"}).status_code == 200


def test_cors_origins_may_write_to_a_keyless_api(live_stack_factory):
    stack = live_stack_factory(env={"DNNQ_CORS_ORIGINS": "http://notebook.example"}, workers=0)
    with stack.client() as c:
        res = c.post("/v1/datasets", files=_csv(), headers={"Origin": "http://notebook.example"})
    assert res.status_code == 201, res.text
    assert res.headers["access-control-allow-origin"] == "http://notebook.example"


# -- keys set but empty ----------------------------------------------------------------------------
@pytest.mark.parametrize("keys", [",", " , ,"])
def test_keys_set_but_holding_none_refuse_to_start(api_settings, keys):
    with pytest.raises(ValueError, match="holds no key"):
        create_app(api_settings.model_copy(update={"api_keys": keys}))


def test_an_empty_keys_file_refuses_to_start(api_settings, tmp_path):
    empty = tmp_path / "keys"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        create_app(api_settings.model_copy(update={"api_keys_file": str(empty)}))
    with pytest.raises(ValueError, match="cannot be read"):
        create_app(api_settings.model_copy(update={"api_keys_file": str(tmp_path / "absent")}))


def test_short_keys_are_warned_about_at_start_never_shown(api_settings, caplog):
    long_key = "x" * 43
    with caplog.at_level(logging.WARNING, logger="dnnq.api"):
        create_app(api_settings.model_copy(update={"api_keys": f"alice:s3cret,bob:{long_key}"}))
    warned = [r.getMessage() for r in caplog.records if "shorter than 16" in r.getMessage()]
    assert len(warned) == 1 and "alice" in warned[0] and "bob" not in warned[0]
    assert "s3cret" not in caplog.text and long_key not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dnnq.api"):
        create_app(api_settings.model_copy(update={"api_keys": f"bob:{long_key}"}))
    assert "shorter than" not in caplog.text
