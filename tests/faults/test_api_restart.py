"""Fault 3: the API process is killed (-9) while a worker trains; a new API process shows the job,
which the worker finishes undisturbed (the API holds no job state: Redis and the worker do)."""

from __future__ import annotations

import hashlib
import signal

import httpx
import pytest

from dnnq.workers import jobs
from tests.faults.conftest import TERMINAL, _signal_group, start_api, wait_for

pytestmark = pytest.mark.e2e


def test_api_killed_mid_training_job_unaffected(live_stack_factory, redis_client, redis_url, data_dir, tmp_path):
    stack = live_stack_factory()
    w = stack.workers[0]
    with stack.client() as http:
        ds = http.post("/v1/datasets/synthetic", json={"name": "spiral", "n_samples": 10_000, "seed": 2})
        assert ds.status_code == 201, ds.text
        epochs = 300
        resp = http.post(
            "/v1/jobs",
            json={
                "dataset_id": ds.json()["id"],
                "model": {"hidden_layers": [32, 16], "output": "softmax"},
                "training": {"epochs": epochs, "batch_size": 64, "seed": 1},
            },
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
    wait_for(lambda: len(jobs.get_history(redis_client, job_id)) >= 10, 60, "the job to train a while")

    _signal_group(stack.api, signal.SIGKILL)  # kill -9 of uvicorn: no shutdown at all
    stack.api.wait(10)
    during = len(jobs.get_history(redis_client, job_id))
    assert jobs.get_job(redis_client, job_id)["status"] == "running"

    proc, base_url, _ = start_api(redis_url, data_dir, tmp_path / "api-2.log")
    stack.api = proc  # so the factory's teardown stops the new one
    with httpx.Client(base_url=base_url, timeout=30) as http:
        seen = http.get(f"/v1/jobs/{job_id}", params={"history": "none"})
        assert seen.status_code == 200
        assert seen.json()["status"] in {"running", "succeeded"}
        assert seen.json()["progress"]["epoch"] >= during
        job = wait_for(
            lambda: (
                (j := http.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json())["status"] in TERMINAL and j
            ),
            180,
            "the job to end",
            every=0.3,
        )
        assert job["status"] == "succeeded", job["error"] or w.log()[-3000:]
        assert job["attempts"] == 1 and job["resumed_from_epoch"] in (None, 0)
        assert [e["epoch"] for e in job["history"]] == list(range(1, epochs + 1))
        weights = http.get(f"/v1/jobs/{job_id}/weights", params={"format": "npz"})
        assert weights.status_code == 200
        assert hashlib.sha256(weights.content).hexdigest() == weights.headers["etag"].strip('"')
    assert w.proc.poll() is None
