"""The dashboard's and the docs pages' security headers, and the pages' fitness for the dashboard's policy.

The dashboard keeps the user's API key in sessionStorage: its pages get a strict Content-Security-Policy
(no inline script, no plugins, no <base>, no framing, Trusted Types), nosniff and no Referer. /docs and
/redoc need inline script and style, so their policy is looser but still same-host only."""

from __future__ import annotations

import re

import pytest

from dnnq.service.routes.dashboard import STATIC_DIR


def directives(policy: str) -> dict[str, set[str]]:
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = set(values)
    return parsed


def assert_common(res) -> dict[str, set[str]]:
    assert res.headers["x-content-type-options"] == "nosniff", res.headers
    assert res.headers["referrer-policy"] == "no-referrer", res.headers
    csp = directives(res.headers["content-security-policy"])
    assert csp["default-src"] == {"'self'"}, csp
    assert csp["object-src"] == {"'none'"} and csp["base-uri"] == {"'none'"}, csp
    assert csp["frame-ancestors"] == {"'none'"}, csp
    return csp


@pytest.mark.parametrize(
    "path", ["/", "/static/dashboard.js", "/static/dashboard.css", "/static/sweep.html", "/static/sweep.js"]
)
def test_dashboard_responses_carry_a_strict_policy(client, path):
    res = client.get(path)
    assert res.status_code == 200, res.text
    csp = assert_common(res)
    assert csp["script-src"] == {"'self'"} and csp["style-src"] == {"'self'"}, csp  # nothing inline
    assert csp["require-trusted-types-for"] == {"'script'"}, csp


def test_a_missing_static_file_carries_the_headers_too(client):
    res = client.get("/static/<img src=x onerror=alert(1)>.html")
    assert res.status_code == 404 and not res.headers["content-type"].startswith("text/html")
    assert_common(res)


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_carry_their_policy(client, path):
    res = client.get(path)
    assert res.status_code == 200, res.text
    csp = assert_common(res)
    assert "'unsafe-eval'" not in csp["script-src"] and "*" not in res.headers["content-security-policy"], csp


@pytest.mark.parametrize("name", ["index.html", "sweep.html"])
def test_pages_need_nothing_inline(name):
    """What the dashboard's script-src 'self' / style-src 'self' would refuse: inline scripts, handler
    attributes, style attributes and elements, javascript: URLs."""
    html = (STATIC_DIR / name).read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert re.findall(r"\son[a-z]+\s*=", html) == []
    assert re.findall(r"<style|\sstyle\s*=|javascript:", html, flags=re.IGNORECASE) == []


@pytest.mark.parametrize("name", ["dashboard.js", "sweep.js"])
def test_scripts_use_no_html_string_sinks(name):
    """Data reaches the DOM as text (textContent, createElement, append); Trusted Types would throw on these."""
    js = (STATIC_DIR / name).read_text()
    sinks = (
        r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|\beval\(|new Function|setAttribute\(\s*[\"']on"
    )
    assert re.findall(sinks, js) == []
