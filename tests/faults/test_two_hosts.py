"""Two hosts without a shared filesystem: the API and two workers, each with its own empty data
directory, share only Redis and an S3 server (moto's, tests/s3.py). A dataset is uploaded, a job
trains, the worker training it is killed -9, the other resumes it from the checkpoint in the object
store, and the weights it serves equal an uninterrupted run's. Nothing is written under either
worker's data directory except its dataset cache."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from dnnq.workers import jobs, keys
from dnnq.workers.object_store import ObjectArtifactStore
from tests.faults.conftest import TERMINAL, npz_arrays, start_api, start_worker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_two_hosts_share_only_redis_and_the_object_store(
    s3_server, s3_env, redis_client, redis_url, tmp_path, own_workers
):
    hosts = {name: tmp_path / name for name in ("api-host", "gpu-host-a", "gpu-host-b")}
    for path in hosts.values():
        path.mkdir()
    api, base_url, _ = start_api(redis_url, hosts["api-host"], tmp_path / "api.log", env=s3_env)
    try:
        for name in ("gpu-host-a", "gpu-host-b"):
            own_workers.append(start_worker(redis_url, hosts[name], tmp_path, env=s3_env, name=name))
        store = ObjectArtifactStore(s3_env["DNNQ_ARTIFACTS_URL"], tmp_path / "test-scratch", environ=s3_env)
        _upload_train_kill_resume(base_url, redis_client, store, own_workers)
    finally:
        api.kill()
        api.wait(10)
    for name in ("gpu-host-a", "gpu-host-b"):
        files = _files(hosts[name])
        assert files, f"{name} cached no dataset"
        assert all(f.startswith("cache/datasets/") for f in files), files
    assert not (hosts["api-host"] / "artifacts").exists()
    assert _files(hosts["api-host"]) == []  # the upload's staging files are gone too


def _upload_train_kill_resume(base_url, redis_client, store, workers) -> None:
    import httpx

    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 2)).astype(np.float32)
    Y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=Y)
    epochs = 60
    with httpx.Client(base_url=base_url, timeout=60) as http:
        ds = http.post("/v1/datasets", files={"file": ("quadrants.npz", buf.getvalue())})
        assert ds.status_code == 201, ds.text
        assert store.exists(f"datasets/{ds.json()['id']}.npz")
        spec = {
            "dataset_id": ds.json()["id"],
            "model": {"hidden_layers": [16, 8]},
            "training": {"epochs": epochs, "batch_size": 64, "seed": 5, "checkpoint_every": 1},
        }

        def run_to_end(job_id: str) -> dict:
            return wait_for(
                lambda: (
                    (j := http.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json())["status"] in TERMINAL and j
                ),
                240,
                f"job {job_id} to end",
                every=0.3,
            )

        resp = http.post("/v1/jobs", json=spec)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        wait_for(
            lambda: len(jobs.get_history(redis_client, job_id)) >= 4 and store.exists(f"jobs/{job_id}/checkpoint.npz"),
            120,
            "a checkpoint in the object store",
        )
        holder = redis_client.get(keys.job_lease(job_id)).split(":")[0]
        trainer = next(w for w in workers if w.name == holder)
        trainer.kill()  # kill -9 of that host's worker (its whole process group), mid-epoch
        done = len(jobs.get_history(redis_client, job_id))
        assert done < epochs, "the job finished before its worker was killed; make it longer"

        job = run_to_end(job_id)  # the other host's sweeper requeues it once the 3 s lease expires
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        assert 0 < job["resumed_from_epoch"] <= done
        assert [e["epoch"] for e in job["history"]] == list(range(1, epochs + 1))
        assert not store.exists(f"jobs/{job_id}/checkpoint.npz")  # removed once the weights are stored

        resp = http.post("/v1/jobs", json=spec)  # the same spec and seed, never interrupted
        reference = run_to_end(resp.json()["id"])
        assert reference["status"] == "succeeded" and reference["attempts"] == 1

        resumed_w = http.get(f"/v1/jobs/{job_id}/weights", params={"format": "npz"})
        reference_w = http.get(f"/v1/jobs/{reference['id']}/weights", params={"format": "npz"})
        assert resumed_w.status_code == reference_w.status_code == 200
        assert resumed_w.headers["etag"] == f'"{hashlib.sha256(resumed_w.content).hexdigest()}"'
        a, b = npz_arrays(resumed_w.content), npz_arrays(reference_w.content)
        assert a.keys() == b.keys() and a
        for name in a:
            assert (a[name] == b[name]).all(), f"{name} differs between the resumed and the uninterrupted run"
        assert [e["loss"] for e in job["history"]] == [e["loss"] for e in reference["history"]]
