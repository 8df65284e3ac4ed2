"""The sweep page (service/static/sweep.html) in a real headless Chromium against the real stack:
a grid of three trials runs to the end; the page draws every trial's loss curve, marks the best one
(bold curve, starred row) and lists the trials (tests/artifacts/sweep.png)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.browser.cdp import Browser, chromium_path

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(chromium_path() is None, reason="Chromium not installed")]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def test_the_sweep_page_compares_every_trial_and_marks_the_best(live_stack, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=(X[:, 0] > 0).astype(np.int64))
    with live_stack.client() as http:
        dataset = http.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).json()["id"]
        base = {"dataset_id": dataset, "model": {"hidden_layers": [3]}, "training": {"epochs": 8, "optimizer": "gd"}}
        sweep = http.post("/v1/sweeps", json={"base": base, "grid": {"lr": [1.0, 0.1, 0.01]}}).json()
    with Browser(tmp_path / "profile") as browser:
        browser.navigate(live_stack.base_url + "/")
        browser.wait_for("!!document.getElementById('nav-sweeps')")
        browser.navigate(f"{live_stack.base_url}/static/sweep.html#{sweep['id']}")
        browser.wait_for("document.getElementById('sweep-status').textContent === 'finished'", timeout=90)
        browser.wait_for("document.getElementById('sweep-chart').dataset.curves === '3'")
        with live_stack.client() as http:
            view = http.get(f"/v1/sweeps/{sweep['id']}").json()
        best = view["best"]["index"]
        assert browser.eval("document.querySelectorAll('#sweep-chart polyline.curve').length") == 3
        assert browser.eval("document.querySelector('#sweep-chart polyline.best').dataset.trial") == str(best)
        assert browser.eval("document.querySelector('#trials-table tr.best').dataset.trial") == str(best)
        assert browser.eval("document.querySelectorAll('#trials-table tbody tr').length") == 3
        assert f"best: trial {best}" in browser.eval("document.getElementById('sweep-best').textContent")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "sweep.png")
        browser.navigate(f"{live_stack.base_url}/static/sweep.html")
        browser.wait_for("document.querySelectorAll('#sweeps-table tbody tr').length === 1")
