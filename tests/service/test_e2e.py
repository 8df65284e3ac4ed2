"""End to end over real HTTP: uvicorn + a real Celery worker process + a real Redis."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from dnnq.models import predict

# The e2e suite runs on both artifact stores: the local directory and an S3 server (tests/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.both_stores]

TERMINAL = {"succeeded", "failed", "cancelled"}


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def wait_for(http, job_id: str, until=TERMINAL, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
        if job["status"] in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def test_upload_train_download_and_predict_reproduce_the_reported_accuracy(live_stack):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(np.int64)
    X_raw = (X * 100).astype(np.float32)  # stored raw; preprocess.scale = 0.01 multiplies it back
    with live_stack.client() as http:
        assert http.get("/readyz").status_code == 200
        ds = http.post("/v1/datasets", files={"file": ("train.npz", npz_bytes(X=X_raw, Y=y))})
        assert ds.status_code == 201
        spec = {
            "dataset_id": ds.json()["id"],
            "model": {"hidden_layers": [8, 4]},
            "training": {"epochs": 40, "learning_rate": 0.05, "seed": 3},
            "preprocess": {"scale": 0.01},
            "device": "cpu",
        }
        submitted = http.post("/v1/jobs", json=spec)
        assert submitted.status_code == 202
        job = wait_for(http, submitted.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"]["epoch"] == 40 and job["device"] == "cpu" and job["attempts"] == 1
        assert job["timings"]["total_s"] > 0 and job["timings"]["load_s"] >= 0
        full = http.get(f"/v1/jobs/{job['id']}").json()
        assert [h["epoch"] for h in full["history"]] == list(range(1, 41))
        assert full["history"][-1]["loss"] == pytest.approx(job["metrics"]["final_loss"])

        npz = http.get(f"/v1/jobs/{job['id']}/weights", params={"format": "npz"})
        assert npz.status_code == 200
        sha = hashlib.sha256(npz.content).hexdigest()
        assert npz.headers["etag"] == f'"{sha}"' and npz.headers["x-checksum-sha256"] == sha
        assert "attachment" in npz.headers["content-disposition"]
        cached = http.get(f"/v1/jobs/{job['id']}/weights", headers={"If-None-Match": f'"{sha}"'})
        assert cached.status_code == 304 and cached.content == b""
        st = http.get(f"/v1/jobs/{job['id']}/weights", params={"format": "safetensors"})
        assert st.status_code == 200 and st.headers["x-checksum-sha256"] == hashlib.sha256(st.content).hexdigest()

        with np.load(io.BytesIO(npz.content), allow_pickle=False) as f:
            from_npz = {k: f[k] for k in f.files}
        from_st = load_safetensors(st.content)
        assert sorted(from_npz) == sorted(from_st) == ["W1", "W2", "W3", "b1", "b2", "b3"]
        for name in from_npz:
            np.testing.assert_array_equal(from_npz[name], from_st[name])
        labels = predict(from_npz, (X_raw.astype(np.float64) * 0.01).T, hidden_activation="relu", output="sigmoid")
        assert float(np.mean(labels == y)) == pytest.approx(job["metrics"]["train_accuracy"], abs=1e-9)
        assert job["metrics"]["train_accuracy"] > 0.8

        served = http.post(f"/v1/jobs/{job['id']}/predict", json={"inputs": X_raw[:25].tolist()})
        assert served.status_code == 200
        assert served.json()["predictions"] == labels[:25].tolist()
        assert len(served.json()["probabilities"]) == 25
        wrong = http.post(f"/v1/jobs/{job['id']}/predict", json={"inputs": [[1.0, 2.0]]})
        assert wrong.status_code == 422 and "needs 4 features" in wrong.json()["detail"]
        model = http.get(f"/v1/jobs/{job['id']}/model")
        assert model.status_code == 200 and json.dumps(model.json())

        metrics = http.get("/metrics").text
        assert 'dnnq_jobs{status="succeeded"} 1.0' in metrics and "dnnq_workers 1.0" in metrics


def parse_sse(lines) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: ") and kind:
            events.append((kind, json.loads(line[len("data: ") :])))
            if kind == "end":
                break
            kind = None
    return events


def test_synthetic_job_streams_one_event_per_epoch_then_end(live_stack):
    with live_stack.client() as http:
        ds = http.post("/v1/datasets/synthetic", json={"name": "spiral", "n_samples": 150, "n_classes": 3})
        assert ds.status_code == 201
        spec = {
            "dataset_id": ds.json()["id"],
            "model": {"hidden_layers": [16], "output": "softmax"},
            "training": {"epochs": 25, "learning_rate": 0.02},
        }
        job_id = http.post("/v1/jobs", json=spec).json()["id"]
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            assert resp.status_code == 200
            events = parse_sse(resp.iter_lines())
    epochs = [d["epoch"] for kind, d in events if kind == "epoch"]
    assert epochs == list(range(1, 26))
    statuses = [d["status"] for kind, d in events if kind == "status"]
    assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
    assert events[-1][1]["metrics"]["train_accuracy"] is not None


def test_cancel_running_long_job(live_stack):
    with live_stack.client() as http:
        ds = http.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 200}).json()["id"]
        submitted = http.post("/v1/jobs", json={"dataset_id": ds, "training": {"epochs": 100_000}})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 60
        while http.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] < 3:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        running = http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
        assert running["status"] == "running" and running["device"] == "cpu"  # known from the first epoch on
        resp = http.post(f"/v1/jobs/{job_id}/cancel")
        assert resp.status_code == 202 and resp.json()["status"] in ("cancelling", "cancelled")
        job = wait_for(http, job_id, timeout=30)
        assert job["status"] == "cancelled"
        assert job["progress"]["epoch"] < 100_000
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        assert http.get(f"/v1/jobs/{job_id}/weights").status_code == 409


def test_diverging_job_fails_with_a_readable_error(live_stack):
    rng = np.random.default_rng(1)
    X = rng.normal(scale=1e4, size=(100, 3))
    Y = X @ np.array([3.0, -2.0, 1.0]) + 5.0
    with live_stack.client() as http:
        ds = http.post("/v1/datasets", files={"file": ("reg.npz", npz_bytes(X=X, Y=Y))}).json()
        assert ds["label_kind"] == "continuous"
        spec = {
            "dataset_id": ds["id"],
            "model": {"hidden_layers": [8], "output": "linear"},
            "training": {"optimizer": "gd", "learning_rate": 10, "epochs": 200, "dtype": "float64"},
        }
        job = wait_for(http, http.post("/v1/jobs", json=spec).json()["id"])
    assert job["status"] == "failed"
    assert "diverged" in job["error"].lower() and "learning_rate" in job["error"]
    assert "Traceback" not in job["error"]


def test_api_keys_from_the_environment(live_stack_factory):
    live_stack = live_stack_factory(env={"DNNQ_API_KEYS": "alice:alice-key,bob:bob-key"})
    alice = {"Authorization": "Bearer alice-key"}
    with live_stack.client() as http:
        assert http.get("/healthz").status_code == 200
        denied = http.get("/v1/jobs")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        ds = http.post("/v1/datasets/synthetic", json={"name": "circles", "n_samples": 60}, headers=alice)
        assert ds.status_code == 201
        job = http.post("/v1/jobs", json={"dataset_id": ds.json()["id"], "training": {"epochs": 2}}, headers=alice)
        assert job.status_code == 202
        bob = {"Authorization": "Bearer bob-key"}
        assert http.get(f"/v1/jobs/{job.json()['id']}", headers=bob).status_code == 404
        assert http.get(f"/v1/datasets/{ds.json()['id']}", headers=bob).status_code == 404
        assert wait_for(_Authed(http, alice), job.json()["id"])["status"] == "succeeded"


class _Authed:
    """http.get with fixed headers, for wait_for."""

    def __init__(self, http, headers):
        self.http, self.headers = http, headers

    def get(self, url, **kwargs):
        return self.http.get(url, headers=self.headers, **kwargs)
