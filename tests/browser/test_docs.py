"""/docs (Swagger UI) and /redoc in a real headless Chromium against the live API, with every host but
127.0.0.1 unresolvable: both pages must render the API's operations from assets the API serves itself
(the fastapi-offline wheel's bundles), and the browser must ask nothing of any other host."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.browser import cdp
from tests.browser.cdp import Browser, chromium_path

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium not installed")

# No DNS answer for any host but loopback: a CDN request fails instead of reaching the internet.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


class RecordingBrowser(Browser):
    """A Browser that notes the URL of every request the page starts, and those its Content-Security-Policy
    refused before they were sent."""

    def __init__(self, *args, **kwargs) -> None:
        self.requested: dict[str, str] = {}  # request id -> URL
        self.refused: set[str] = set()  # URLs blocked by the page's CSP
        super().__init__(*args, **kwargs)
        self.send("Network.enable")

    def _note_event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requested[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            self.refused.add(self.requested.get(params["requestId"], ""))
        super()._note_event(msg)


@pytest.fixture
def offline_browser(tmp_path, monkeypatch):
    monkeypatch.setattr(cdp, "FLAGS", [*cdp.FLAGS, OFFLINE])
    with RecordingBrowser(tmp_path / "profile") as browser:
        yield browser


def off_machine(urls) -> list[str]:
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname != "127.0.0.1"]


@pytest.mark.browser
def test_docs_and_redoc_render_offline(live_stack_factory, offline_browser):
    stack = live_stack_factory(workers=0)
    browser = offline_browser

    browser.navigate(stack.base_url + "/docs")
    # Swagger UI lists one block per operation, each with its operationId (displayOperationId)
    count = browser.wait_for("document.querySelectorAll('.opblock').length", timeout=60)
    assert count >= 13, count
    ids = browser.wait_for(
        "Array.from(document.querySelectorAll('.opblock-summary-operation-id')).map(e => e.textContent)"
    )
    assert {"submit_job", "get_job", "get_weights", "upload_dataset"} <= set(ids), ids
    assert browser.eval("document.querySelector('.information-container .title').textContent").startswith("dnnq")

    browser.navigate(stack.base_url + "/redoc")
    # ReDoc gives each operation a section named after its operationId
    browser.wait_for("!!document.querySelector('[data-section-id=\"operation/submit_job\"]')", timeout=60)
    assert browser.eval("document.querySelectorAll('[data-section-id^=\"operation/\"]').length") >= 13
    assert browser.eval("document.body.innerText").count("Submit a training job") >= 1

    urls = list(browser.requested.values())
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in urls), urls
    assert any(u.endswith("/docs/assets/redoc.standalone.js") for u in urls), urls
    # Anything for another host (ReDoc's bundle links Redocly's logo on a CDN) is refused by the page's
    # Content-Security-Policy before it is sent: online too, the pages ask nothing of another host.
    sent_away = [u for u in off_machine(urls) if u not in browser.refused]
    assert sent_away == [], sent_away
    assert browser.console == [], browser.console
