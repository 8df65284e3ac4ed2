"""The dashboard in a real headless Chromium against the real stack (Redis, worker, uvicorn).

Drives the page the way a person would: create a synthetic dataset and submit a job through
the forms, watch the curves grow on the job page, wait for success, take a screenshot
(tests/artifacts/dashboard.png).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from tests.browser.cdp import Browser, chromium_path

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

needs_chromium = pytest.mark.skipif(chromium_path() is None, reason="Chromium not installed")


def set_fields(browser: Browser, values: dict[str, str]) -> None:
    """Type into inputs/selects by id, firing the events a person's typing fires."""
    browser.eval(
        "(() => { const v = " + json.dumps(values) + "; for (const [id, value] of Object.entries(v)) {"
        " const el = document.getElementById(id); if (!el) throw new Error('no #' + id);"
        " el.value = value; el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); } })()"
    )


def click(browser: Browser, selector: str) -> None:
    browser.eval(f"document.querySelector({json.dumps(selector)}).click()")


def text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent"


def wait_for_file(path: Path, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size > 0:
            return path.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"{path} was not downloaded within {timeout} s")


def drive_dashboard(
    browser: Browser, base_url: str, screenshot: Path, epochs: int = 150, downloads: Path | None = None
) -> dict:
    """The whole walk through the page; returns what it observed (asserts as it goes)."""
    browser.navigate(base_url + "/#/new")
    browser.wait_for("document.readyState === 'complete' && !document.getElementById('view-new').hidden")

    # 1. A synthetic dataset through its form; the job form's dataset select picks it up.
    set_fields(
        browser,
        {"synthetic-name": "moons", "synthetic-n-samples": "2000", "synthetic-noise": "0.15", "synthetic-seed": "3"},
    )
    click(browser, "#create-synthetic")
    message = browser.wait_for(f"!document.getElementById('message').hidden && {text('#message')}")
    assert message.startswith("Dataset moons") and "created: 2000 examples × 2 features" in message, message
    dataset_id = browser.eval("document.getElementById('dataset-select').value")
    assert len(dataset_id) == 24, dataset_id
    assert browser.eval("document.getElementById('output').value") == "sigmoid"  # chosen from binary labels

    # 2. A bad spec: the API's problem+json detail is shown to the user.
    set_fields(browser, {"hidden-layers": "8,0", "epochs": str(epochs)})
    click(browser, "#submit-job")
    error = browser.wait_for(f"document.getElementById('message').className === 'error' && {text('#message')}")
    assert "hidden_layers" in error, error

    # 3. A good job: the page moves to the job view.
    set_fields(
        browser,
        {
            "hidden-layers": "16,8",
            "hidden-activation": "tanh",
            "optimizer": "adam",
            "learning-rate": "0.01",
            "batch-size": "16",
            "device": "cpu",
        },
    )
    click(browser, "#submit-job")
    job_id = browser.wait_for("location.hash.startsWith('#/jobs/') && location.hash.slice(7)")
    assert len(job_id) == 32, job_id

    # 4. Curves drawn live: two samples while running, the second with more points.
    points = "Number(document.getElementById('loss-chart').dataset.points)"
    first = browser.wait_for(f"{text('#job-status')} === 'running' && {points} > 0 && {points}", timeout=60)
    second = browser.wait_for(f"{points} > {first} && {points}", timeout=60)
    assert second > first >= 1
    assert int(browser.eval(text("#epoch-count"))) >= second

    # 5. Success: every epoch on the curve, downloads enabled, facts filled in.
    browser.wait_for(f"{text('#job-status')} === 'succeeded'", timeout=180)
    browser.wait_for(f"{points} === {epochs}", timeout=10)
    assert browser.eval(text("#epoch-count")) == str(epochs)
    assert browser.eval("Number(document.getElementById('accuracy-chart').dataset.points)") == epochs
    assert browser.eval("document.getElementById('download-onnx').disabled") is False
    assert browser.eval("document.getElementById('cancel-job').disabled") is True
    facts = browser.eval(text("#job-facts"))
    assert "cpu" in facts and "16-8 · tanh → sigmoid" in facts, facts
    config = json.loads(browser.eval(text("#job-config")))
    assert config["model"]["hidden_layers"] == [16, 8] and config["training"]["batch_size"] == 16
    browser.screenshot(screenshot)
    onnx_blob = None
    if downloads is not None:  # the download button really hands over the file
        browser.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        click(browser, "#download-onnx")
        onnx_blob = wait_for_file(downloads / f"{job_id}.onnx")

    # 6. The job list shows it (filtered by status), and the dataset page its first rows.
    browser.navigate(f"{base_url}/#/jobs")
    browser.wait_for("document.readyState === 'complete' && !document.getElementById('view-jobs').hidden")
    set_fields(browser, {"status-filter": "succeeded"})
    row = browser.wait_for(
        f"[...document.querySelectorAll('#jobs-table tbody tr')].map(r => r.textContent)"
        f".find(t => t.includes({json.dumps(job_id[:8])}))"
    )
    assert "succeeded" in row and "16-8" in row, row
    browser.navigate(f"{base_url}/#/datasets/{dataset_id}")
    rows = browser.wait_for("document.querySelectorAll('#dataset-preview tbody tr').length")
    assert rows >= 1
    assert "2000 examples × 2 features" in browser.eval(text("#dataset-facts"))
    return {
        "job_id": job_id,
        "dataset_id": dataset_id,
        "samples": (first, second),
        "onnx": onnx_blob,
        "console": browser.console,
    }


@pytest.mark.browser
@pytest.mark.e2e
@needs_chromium
def test_dashboard_trains_a_job_through_the_forms(live_stack, tmp_path):
    with Browser(tmp_path / "profile") as browser:
        seen = drive_dashboard(
            browser, live_stack.base_url, ARTIFACTS / "dashboard.png", downloads=tmp_path / "downloads"
        )
    assert seen["console"] == [], seen["console"]
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

    # The downloaded weights.onnx computes what the API's own predict route computes.
    X = np.random.default_rng(0).uniform(-1.5, 2.5, (25, 2)).astype(np.float32)
    with live_stack.client() as http:
        res = http.post(f"/v1/jobs/{seen['job_id']}/predict", json={"inputs": X.tolist()})
    assert res.status_code == 200, res.text
    (probabilities,) = ReferenceEvaluator(onnx.load_from_string(seen["onnx"])).run(["probabilities"], {"X": X})
    assert probabilities.shape == (25, 1)
    np.testing.assert_allclose(probabilities, res.json()["probabilities"], rtol=1e-4, atol=1e-5)  # (25, 1) both


@pytest.mark.browser
@pytest.mark.e2e
@needs_chromium
def test_dashboard_with_api_keys_polls_with_the_saved_key(live_stack_factory, tmp_path):
    stack = live_stack_factory(env={"DNNQ_API_KEYS": "alice:key-a"})
    with Browser(tmp_path / "profile") as browser:
        browser.navigate(stack.base_url + "/#/jobs")
        # Without a key: the 401's detail and how to fix it, in the visible message area.
        error = browser.wait_for(f"!document.getElementById('message').hidden && {text('#message')}")
        assert "API key missing" in error and "Paste your API key" in error, error

        set_fields(browser, {"api-key": "key-a"})
        browser.eval("document.querySelector('#key-form button').click()")
        # kept in this tab only (sessionStorage), never on disk (localStorage) where it would outlive the tab
        assert browser.wait_for("sessionStorage.getItem('dnnq.apiKey')") == "key-a"
        assert browser.eval("localStorage.getItem('dnnq.apiKey')") is None
        browser.navigate(stack.base_url + "/#/new")
        browser.wait_for("!document.getElementById('view-new').hidden")
        set_fields(browser, {"synthetic-name": "blobs", "synthetic-n-samples": "300", "synthetic-n-classes": "3"})
        click(browser, "#create-synthetic")
        browser.wait_for("document.getElementById('dataset-select').value.length === 24")
        assert browser.eval("document.getElementById('output').value") == "softmax"  # from integer labels
        set_fields(browser, {"hidden-layers": "8", "epochs": "40", "learning-rate": "0.05"})
        click(browser, "#submit-job")
        job_id = browser.wait_for("location.hash.startsWith('#/jobs/') && location.hash.slice(7)")

        # EventSource cannot carry the key: the page polls ?history=full instead, and still fills the curves.
        browser.wait_for(f"{text('#job-status')} === 'succeeded'", timeout=120)
        browser.wait_for("document.getElementById('loss-chart').dataset.points === '40'", timeout=10)
        assert browser.eval(text("#epoch-count")) == "40"
        assert browser.console == [], browser.console
    with stack.client(headers={"Authorization": "Bearer key-a"}) as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["spec"]["model"]["output"] == "softmax"


def npz_upload(http, name: str, X: np.ndarray, y: np.ndarray) -> str:
    import io

    buf = io.BytesIO()
    np.savez(buf, X=X, Y=y)
    res = http.post("/v1/datasets", files={"file": (f"{name}.npz", buf.getvalue())}, data={"name": name})
    assert res.status_code == 201, res.text
    return res.json()["id"]


# The course's 4-layer job ("Deep Neural Network - Application"), as the form must express it.
COURSE_TRAINING = {"optimizer": "gd", "learning_rate": 0.0075, "epochs": 2500, "init": "xavier", "seed": 1}
COURSE_FORM = {
    "hidden-layers": "20,7,5",
    "hidden-activation": "relu",
    "output": "sigmoid",
    "optimizer": "gd",
    "learning-rate": "0.0075",
    "epochs": "2500",
    "batch-size": "",
    "init": "xavier",
    "seed": "1",
    "dtype": "float64",
    "scale": "0.00392156862745098",
    "device": "auto",
}

TICKS = """(() => [...document.querySelectorAll('#loss-chart text, #accuracy-chart text')].map(t => {
  const b = t.getBBox(); return {cls: t.getAttribute('class'), text: t.textContent, left: b.x, right: b.x + b.width,
  width: t.ownerSVGElement.viewBox.baseVal.width}; }))()"""


def visible(selector: str) -> str:
    found = f"document.querySelector({json.dumps(selector)})"
    return f"(() => {{ const e = {found}; return !!e && !e.hidden && e.offsetParent !== null; }})()"


def assert_nice(labels: list[str]) -> None:
    """y tick labels: evenly spaced by 1, 2, 2.5 or 5 x 10^k, each a whole multiple of that step."""
    values = [float(v) for v in labels]
    steps = {round(b - a, 12) for a, b in zip(values[:-1], values[1:], strict=True)}
    assert len(values) >= 3 and len(steps) == 1, labels
    (step,) = steps
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert any(abs(mantissa - m) < 1e-9 for m in (1, 2, 2.5, 5)), (labels, step)
    for v in values:
        assert abs(v / step - round(v / step)) < 1e-6, (labels, v)
    assert all(len(t.replace("-", "").replace(".", "").lstrip("0")) <= 4 for t in labels), labels


@pytest.mark.browser
@pytest.mark.e2e
@needs_chromium
def test_dashboard_course_job_cancel_timings_ticks_and_names(live_stack, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (24, 12)).astype(np.float64)
    y = (X[:, 0] > 127).astype(np.int64)
    with live_stack.client() as http:
        train = npz_upload(http, "cats-train", X, y)
        test = npz_upload(http, "cats-test", X[:10], y[:10])
    with Browser(tmp_path / "profile") as browser:
        # 1. The New-job form expresses the course's job: validation set, init, seed, dtype, scale.
        browser.navigate(live_stack.base_url + "/#/new")
        browser.wait_for("document.querySelectorAll('#validation-dataset-select option').length === 3")
        set_fields(browser, {"dataset-select": train, "validation-dataset-select": test, **COURSE_FORM})
        click(browser, "#submit-job")
        job_id = browser.wait_for("location.hash.startsWith('#/jobs/') && location.hash.slice(7)")
        with live_stack.client() as http:
            spec = http.get(f"/v1/jobs/{job_id}").json()["spec"]
        assert spec["dataset_id"] == train and spec["validation_dataset_id"] == test
        assert spec["model"] == {"hidden_layers": [20, 7, 5], "hidden_activation": "relu", "output": "sigmoid"}
        assert {k: spec["training"][k] for k in COURSE_TRAINING} == COURSE_TRAINING
        assert spec["training"]["dtype"] == "float64" and spec["training"]["batch_size"] is None
        assert spec["preprocess"]["scale"] == 0.00392156862745098 and spec["device"] == "auto"

        # 2. Finished: no Cancel; timings under readable labels; the datasets by name.
        browser.wait_for(f"{text('#job-status')} === 'succeeded'", timeout=180)
        browser.wait_for("document.getElementById('loss-chart').dataset.points === '2500'", timeout=10)
        assert browser.eval(visible("#cancel-job")) is False
        facts = browser.eval(text("#job-facts"))
        assert "Training" in facts and "Total in the worker" in facts, facts
        assert "_s" not in facts and "train_s" not in facts, facts
        assert "cats-train" in facts and "cats-test" in facts and train not in facts, facts

        # 3. Ticks: every label inside the chart (the last x tick too), y labels at round numbers.
        ticks = browser.eval(TICKS)
        x_ticks = [t for t in ticks if t["cls"] == "x-tick"]
        y_ticks = [t for t in ticks if t["cls"] == "y-tick"]
        assert len(x_ticks) >= 6 and len(y_ticks) >= 6, ticks  # both charts
        assert x_ticks[-1]["text"] == "2500", x_ticks
        for t in ticks:
            assert t["left"] >= 0 and t["right"] <= t["width"], t
        n_loss = browser.eval("document.querySelectorAll('#loss-chart .y-tick').length")
        assert_nice([t["text"] for t in y_ticks[:n_loss]])
        assert_nice([t["text"] for t in y_ticks[n_loss:]])

        # 4. A running job shows Cancel; cancelling hides it.
        with live_stack.client() as http:
            res = http.post("/v1/jobs", json={"dataset_id": train, "training": {"epochs": 100000}})
            assert res.status_code == 202, res.text
            long_id = res.json()["id"]
        browser.navigate(f"{live_stack.base_url}/#/jobs/{long_id}")
        browser.wait_for(f"['queued', 'running'].includes({text('#job-status')}) && {visible('#cancel-job')}")
        click(browser, "#cancel-job")
        browser.wait_for(f"['cancelling', 'cancelled'].includes({text('#job-status')})", timeout=30)
        assert browser.eval(visible("#cancel-job")) is False

        # 5. The job list names the dataset instead of its id.
        browser.navigate(f"{live_stack.base_url}/#/jobs")
        row = browser.wait_for(
            f"[...document.querySelectorAll('#jobs-table tbody tr')].map(r => r.textContent)"
            f".find(t => t.includes({json.dumps(job_id[:8])}))"
        )
        assert "cats-train" in row and train[:8] not in row, row
        assert browser.console == [], browser.console
