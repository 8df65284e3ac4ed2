"""The dashboard router serves the page and its files, and nothing outside service/static."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dnnq.service.routes.dashboard import STATIC_DIR, router


def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_index_and_assets_are_served():
    c = client()
    res = c.get("/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    for ref in ("/static/dashboard.js", "/static/dashboard.css", 'id="submit-form"', 'id="loss-chart"'):
        assert ref in res.text
    js = c.get("/static/dashboard.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert js.text == (STATIC_DIR / "dashboard.js").read_text()
    css = c.get("/static/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


def test_nothing_outside_static_and_no_cdn():
    c = client()
    assert c.get("/static/missing.js").status_code == 404
    assert c.get("/static/../routes/dashboard.py").status_code == 404
    assert c.get("/static/%2e%2e/routes/dashboard.py").status_code == 404
    assert c.get("/static/").status_code == 404
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        body = (STATIC_DIR / name).read_text()
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body, name
