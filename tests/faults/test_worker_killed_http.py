"""Fault 5, end to end over HTTP: the worker's whole process group is killed -9 during training; a new
worker resumes the job from its checkpoint, and the weights served by the API equal, array for array,
those of an uninterrupted run of the same spec. (tests/workers/test_worker_e2e.py checks the same
below the API, with jobs created in Redis directly.)"""

from __future__ import annotations

import pytest

from dnnq.workers import jobs
from tests.faults.conftest import TERMINAL, npz_arrays, wait_for

pytestmark = pytest.mark.e2e


def test_worker_killed_mid_job_resumes_to_the_uninterrupted_weights(live_stack, worker, redis_client, store):
    epochs = 80
    with live_stack.client() as http:
        ds = http.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 20_000, "seed": 4})
        assert ds.status_code == 201, ds.text
        spec = {
            "dataset_id": ds.json()["id"],
            "model": {"hidden_layers": [16, 8]},
            "training": {"epochs": epochs, "batch_size": 64, "seed": 11, "checkpoint_every": 1},
        }

        def run_to_end(job_id: str) -> dict:
            return wait_for(
                lambda: (
                    (j := http.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json())["status"] in TERMINAL and j
                ),
                180,
                f"job {job_id} to end",
                every=0.3,
            )

        resp = http.post("/v1/jobs", json=spec)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        wait_for(
            lambda: len(jobs.get_history(redis_client, job_id)) >= 5 and store.exists(f"jobs/{job_id}/checkpoint.npz"),
            60,
            "a checkpoint",
        )
        live_stack.workers[0].kill()  # kill -9 of the worker's process group, mid-epoch
        done = len(jobs.get_history(redis_client, job_id))
        if done >= epochs:
            pytest.fail("the job finished before the worker was killed; make it longer")
        assert http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()["status"] == "running"

        worker()  # its sweeper requeues the job once the 3 s lease has expired
        job = run_to_end(job_id)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        assert 0 < job["resumed_from_epoch"] <= done
        assert [e["epoch"] for e in job["history"]] == list(range(1, epochs + 1))

        resp = http.post("/v1/jobs", json=spec)  # the same spec and seed, never interrupted
        assert resp.status_code == 202, resp.text
        reference = run_to_end(resp.json()["id"])
        assert reference["status"] == "succeeded" and reference["attempts"] == 1

        resumed_w = http.get(f"/v1/jobs/{job_id}/weights", params={"format": "npz"})
        reference_w = http.get(f"/v1/jobs/{reference['id']}/weights", params={"format": "npz"})
        assert resumed_w.status_code == reference_w.status_code == 200
        a, b = npz_arrays(resumed_w.content), npz_arrays(reference_w.content)
        assert a.keys() == b.keys() and a
        for name in a:
            assert a[name].dtype == b[name].dtype, name
            assert (a[name] == b[name]).all(), f"{name} differs between the resumed and the uninterrupted run"
        assert [e["loss"] for e in job["history"]] == [e["loss"] for e in reference["history"]]
