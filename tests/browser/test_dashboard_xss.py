"""Hostile strings in a real headless Chromium: a dataset name, an upload's file name and CSV class labels
written as HTML that runs script, shown on every dashboard view that renders them, plus ids in the URL
fragment whose 404 detail echoes them. No script may run, and each string must read back as typed.

Without API keys every user sees every dataset, so a name that ran script would run in another user's
browser; with keys on it would read the key the dashboard keeps in sessionStorage."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.browser.cdp import Browser, chromium_path

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(chromium_path() is None, reason="Chromium not installed")]

# Each sets its own number, so a failure names the one that ran.
NAME = "<img src=x onerror=window.__xss=1>"
FILE_NAME = "<svg onload=window.__xss=2>.csv"  # httpx would percent-encode a quote in it
LABELS = ["<img src=x onerror=window.__xss=3>", "<script>window.__xss=4</script>"]
FRAGMENT_ID = "<img src=x onerror=window.__xss=5>"


def hostile_csv() -> bytes:
    rows = ["x1,x2,label"] + [f"{i * 0.1},{1 - i * 0.1},{LABELS[i % 2]}" for i in range(8)]
    return ("\n".join(rows) + "\n").encode()


def no_script_ran(browser: Browser) -> None:
    # An <img>/<svg> parsed from data, or a handler that already fired, would show here.
    assert browser.eval("window.__xss === undefined") is True, browser.eval("window.__xss")
    assert browser.eval("document.querySelectorAll('main img, main script, main svg:not([id])').length") == 0


def text_of(selector: str) -> str:
    return f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent).join('\\n')"


def filled(browser: Browser, rows: str, shown: str) -> str:
    """Wait until `rows` (a selector) matches something; return the text of `shown`."""
    return browser.wait_for(f"document.querySelectorAll({json.dumps(rows)}).length && {text_of(shown)}")


MESSAGE = "!document.getElementById('message').hidden && document.getElementById('message').textContent"
# What an HTML-string sink does on the page: throws where the page's Trusted Types policy holds.
SINK = "(() => { try { document.createElement('div').innerHTML = '<b>x</b>'; return 'parsed'; }"
SINK += " catch (e) { return e.name; } })()"


@pytest.mark.browser
def test_hostile_names_and_labels_are_shown_as_text(live_stack_factory, tmp_path):
    stack = live_stack_factory(workers=0)  # jobs stay queued: their pages still name the dataset
    with stack.client() as http:
        res = http.post("/v1/datasets", files={"file": (FILE_NAME, hostile_csv())}, data={"name": NAME})
        assert res.status_code == 201, res.text
        dataset = res.json()
        assert dataset["name"] == NAME and sorted(dataset["classes"]) == sorted(LABELS), dataset
        spec = {"dataset_id": dataset["id"], "training": {"epochs": 5}, "wait_for_worker": True}
        res = http.post("/v1/jobs", json=spec)
        assert res.status_code == 202, res.text
        job_id = res.json()["id"]

    base = stack.base_url
    with Browser(tmp_path / "profile") as browser:
        browser.navigate(base + "/#/datasets")
        assert NAME in filled(browser, "#datasets-table tbody tr", "#datasets-table tbody")
        no_script_ran(browser)

        browser.navigate(f"{base}/#/datasets/{dataset['id']}")
        facts = filled(browser, "#dataset-preview tbody tr", "#dataset-facts")
        assert browser.eval(text_of("#dataset-title")) == "Dataset " + NAME
        assert all(label in facts for label in LABELS) and "upload:" + FILE_NAME in facts, facts
        no_script_ran(browser)

        browser.navigate(base + "/#/new")
        assert NAME in filled(browser, "#dataset-select option", "#dataset-select option")
        no_script_ran(browser)

        browser.navigate(base + "/#/jobs")
        assert NAME in filled(browser, "#jobs-table tbody tr", "#jobs-table tbody")
        no_script_ran(browser)

        browser.navigate(f"{base}/#/jobs/{job_id}")
        facts = browser.wait_for(f"{text_of('#job-facts')}.includes({json.dumps(NAME)}) && {text_of('#job-facts')}")
        assert job_id in facts, facts
        no_script_ran(browser)

        # An id from the fragment that is not an id's shape is refused by the page, quoted as text in the
        # message box; none reaches an API path ("..": /v1/jobs/.. is /v1/; a stray "%" threw before).
        fetched = "performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)"
        for page in ("/#/jobs/", "/#/datasets/", "/static/sweep.html#"):
            for fragment in (quote(FRAGMENT_ID, safe="="), "..", "%E0%A4%A", "a%2F..%2Fb"):
                browser.navigate("about:blank")  # a fresh document: no message left from the last view
                browser.navigate(base + page + fragment)  # as the browser writes the URL
                assert browser.wait_for(MESSAGE).startswith("No "), fragment
                no_script_ran(browser)
                paths = browser.eval(fetched)
                assert not any(p in ("/v1", "/v1/") or ".." in p or "%" in p for p in paths), (fragment, paths)

        # Behind the escaping, the page's Content-Security-Policy: an HTML-string sink throws.
        assert browser.eval(SINK) == "TypeError"
        assert browser.console == [], browser.console
