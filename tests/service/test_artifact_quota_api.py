"""DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT through the API (in-process, real Redis, no worker): a submit or a
sweep that would take the key's jobs past the bytes their artifacts may take is a 413 that says the use
and the limit, and writes nothing; deleting jobs makes room; another key has its own quota."""

from __future__ import annotations

import time

import pytest

from dnnq.workers import datasets, jobs, keys
from dnnq.workers.artifact_quota import max_artifact_bytes
from dnnq.workers.spec import JobSpec, to_train_config
from tests.service.test_api import assert_problem, binary_npz, fake_worker, make_client

ALICE, BOB = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
SPEC = {"model": {"hidden_layers": [64, 32]}, "training": {"epochs": 50, "optimizer": "adam"}}


def reservation(r, body: dict) -> int:
    """What one job of `body` reserves (the bound itself is checked against real files in
    tests/workers/test_artifact_quota.py)."""
    spec = JobSpec.model_validate(body)
    meta = datasets.get_dataset(r, spec.dataset_id)
    assert meta is not None
    return max_artifact_bytes(to_train_config(spec, meta), meta["classes"])


def reserved(r, tenant: str) -> int:
    return int(r.get(keys.tenant_artifact_bytes(tenant)) or 0)


@pytest.mark.parametrize("fast_lane", [True, False])
def test_a_submit_past_the_quota_is_a_413_that_says_the_use_and_writes_nothing(api_settings, redis_client, fast_lane):
    fake_worker(redis_client, "w-default", "default")
    with make_client(api_settings, api_keys="alice:key-a,bob:key-b", fast_lane=fast_lane) as probe:
        ds = probe.post("/v1/datasets", files={"file": ("d.npz", binary_npz())}, headers=ALICE).json()["id"]
    body = {"dataset_id": ds, **SPEC}
    need = reservation(redis_client, body)
    quota = 2 * need + need // 2  # room for two
    with make_client(
        api_settings, api_keys="alice:key-a,bob:key-b", fast_lane=fast_lane, max_artifact_bytes_per_tenant=quota
    ) as c:
        first = c.post("/v1/jobs", json=body, headers=ALICE)
        assert first.status_code == 202, first.text
        assert jobs.get_job(redis_client, first.json()["id"])["artifact_bytes"] == need
        assert c.post("/v1/jobs", json=body, headers=ALICE).status_code == 202
        over = c.post("/v1/jobs", json=body, headers=ALICE)
        assert_problem(
            over,
            413,
            f"may store up to {need} bytes",
            f"over its quota of {quota} bytes (DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT; {2 * need} bytes are in use)",
            "DELETE /v1/jobs/{id}",
            "ask the operator to raise DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT",
        )
        assert c.get("/v1/jobs", headers=ALICE).json()["total"] == 2
        assert redis_client.zcard(keys.OUTBOX) <= 2 and reserved(redis_client, "alice") == 2 * need
        assert c.post("/v1/jobs", json=body, headers=BOB).status_code == 422  # bob's own quota; alice's dataset
        # deleting a finished job makes room again
        job_id = first.json()["id"]
        assert c.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).status_code == 202
        assert c.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
        assert reserved(redis_client, "alice") == need
        assert c.post("/v1/jobs", json=body, headers=ALICE).status_code == 202


def test_a_sweep_past_the_quota_is_a_413_and_no_trial_is_written(api_settings, redis_client):
    fake_worker(redis_client, "w-default", "default")
    with make_client(api_settings) as probe:
        ds = probe.post("/v1/datasets", files={"file": ("d.npz", binary_npz())}).json()["id"]
    base = {"dataset_id": ds, **SPEC}
    need = reservation(redis_client, base)  # every trial below has the same layers and epochs
    with make_client(api_settings, max_artifact_bytes_per_tenant=5 * need) as c:
        assert c.post("/v1/jobs", json=base).status_code == 202
        over = c.post("/v1/sweeps", json={"base": base, "grid": {"seed": [1, 2, 3, 4, 5]}})
        assert_problem(
            over,
            413,
            f"This sweep's 5 trials together may store up to {5 * need} bytes",
            f"DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT; {need} bytes are in use",
        )
        assert c.get("/v1/jobs").json()["total"] == 1 and c.get("/v1/sweeps").json()["total"] == 0
        assert reserved(redis_client, "public") == need

        sweep = c.post("/v1/sweeps", json={"base": base, "grid": {"seed": [1, 2, 3, 4]}})
        assert sweep.status_code == 202, sweep.text
        assert reserved(redis_client, "public") == 5 * need
        assert_problem(c.post("/v1/jobs", json=base), 413, f"{5 * need} bytes are in use")

        # everything deleted: nothing is reserved any more
        sweep_id = sweep.json()["id"]
        assert c.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 202
        assert c.delete(f"/v1/sweeps/{sweep_id}").status_code == 204
        (job,) = c.get("/v1/jobs").json()["items"]
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert not redis_client.exists(keys.tenant_artifact_bytes("public"))


@pytest.mark.e2e
def test_a_real_jobs_files_fit_in_what_it_reserved_and_its_delete_gives_it_back(live_stack, redis_client):
    """A real worker trains the job (its long history moves to the store at the finish); every file it
    left is within the reservation, and deleting the job takes the files and the reservation away."""
    with live_stack.client() as http:
        ds = http.post("/v1/datasets", files={"file": ("d.npz", binary_npz(m=60))}).json()["id"]
        body = {"dataset_id": ds, **SPEC, "training": {"epochs": 300, "optimizer": "adam"}, "device": "cpu"}
        submitted = http.post("/v1/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 120
        while (job := http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.2)
        files = list((live_stack.data_dir / "artifacts" / "jobs" / job_id).iterdir())
        assert "history.jsonl.gz" in {f.name for f in files}
        need = jobs.get_job(redis_client, job_id)["artifact_bytes"]
        assert need == reservation(redis_client, body) == reserved(redis_client, "public")
        assert sum(f.stat().st_size for f in files) <= need
        assert http.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert not redis_client.exists(keys.tenant_artifact_bytes("public"))
        assert not (live_stack.data_dir / "artifacts" / "jobs" / job_id).exists()
