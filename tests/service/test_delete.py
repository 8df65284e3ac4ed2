"""DELETE /v1/jobs/{id}, DELETE /v1/datasets/{id} and finished jobs' compact histories, end to end: uvicorn,
a real worker process, a real Redis; the data directory and Redis scanned for what a delete leaves."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

from dnnq.service.schemas import thin_history
from dnnq.workers import keys

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "cancelled"}
ALICE = {"Authorization": "Bearer key-a"}
BOB = {"Authorization": "Bearer key-b"}
THIN = 50  # DNNQ_HISTORY_FULL_MAX: the thin view of a 400-epoch job thins it


@pytest.fixture
def live_stack_env() -> dict[str, str]:
    # a sweep every 2 s: on the S3 store, a worker's cached copy of a deleted dataset goes at its next sweep
    return {"DNNQ_API_KEYS": "alice:key-a,bob:key-b", "DNNQ_HISTORY_FULL_MAX": str(THIN), "DNNQ_LEASE_SECONDS": "4"}


def npz_bytes(seed: int = 0, m: int = 60) -> bytes:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 2))
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=(X[:, 0] > 0).astype(np.int64))
    return buf.getvalue()


def upload(http, seed: int = 0) -> str:
    ds = http.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(seed))}, headers=ALICE)
    assert ds.status_code in (200, 201), ds.text
    return ds.json()["id"]


def submit(http, dataset_id: str, epochs: int, **headers: str) -> str:
    spec = {
        "dataset_id": dataset_id,
        "model": {"hidden_layers": [3]},
        "training": {"epochs": epochs, "learning_rate": 0.05, "seed": 1},
        "device": "cpu",
    }
    job = http.post("/v1/jobs", json=spec, headers={**ALICE, **headers})
    assert job.status_code == 202, job.text
    return job.json()["id"]


def wait_for(http, job_id: str, until=TERMINAL, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}", params={"history": "none"}, headers=ALICE).json()
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def sse_epochs(http, job_id: str) -> list[dict]:
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=ALICE) as events:
        assert events.status_code == 200
        text = "".join(events.iter_text())
    blocks = [b for b in text.split("\n\n") if "event: epoch" in b]
    return [json.loads(line[len("data: ") :]) for b in blocks for line in b.splitlines() if line.startswith("data: ")]


def mentions(r, text: str) -> list[str]:
    """Keys whose name or content holds `text` (the test Redis is this test's alone)."""
    found = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            content = [r.get(key) or ""]
        elif kind == "hash":
            content = [x for pair in r.hgetall(key).items() for x in pair]
        elif kind == "list":
            content = r.lrange(key, 0, -1)
        elif kind == "set":
            content = list(r.smembers(key))
        elif kind == "zset":
            content = r.zrange(key, 0, -1)
        else:
            content = []
        if text in key or any(text in c for c in content):
            found.append(key)
    return found


def mentions_after_the_worker(r, text: str, seconds: float = 10.0) -> list[str]:
    """mentions(), once the worker has let the job go: a job reads succeeded as soon as its finish ran,
    and the worker acks its Celery message (the 'unacked' hash) and clears its current job (its
    dnnq:worker:* hash) a moment later. A key the delete left behind stays, and is still reported."""
    deadline = time.monotonic() + seconds
    while (found := mentions(r, text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.fixture
def files_naming(data_dir, artifact_backend, artifact_env, request):
    """files_naming(text): files in the data directory whose name holds text, and, on the S3 store, the
    keys of the test's bucket that do."""

    def local(text: str) -> list[str]:
        return [str(p) for p in data_dir.rglob("*") if text in p.name]

    if artifact_backend != "s3":
        return local
    server = request.getfixturevalue("s3_server")
    bucket = artifact_env["DNNQ_ARTIFACTS_URL"].split("/")[2]
    return lambda text: local(text) + [k for k in server.keys(bucket) if text in k]


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


@pytest.mark.both_stores
def test_a_finished_jobs_history_moves_and_every_view_answers_the_same(live_stack, redis_client):
    r = redis_client
    with live_stack.client() as http:
        job_id = submit(http, upload(http), 400)
        job = wait_for(http, job_id)
        assert job["status"] == "succeeded", job["error"]
        assert not r.exists(keys.job_history(job_id))  # moved: the record alone stays in Redis
        assert r.hget(keys.job(job_id), "history_stored") == "400"
        assert r.memory_usage(keys.job(job_id), samples=0) < 8 * 1024

        full = http.get(f"/v1/jobs/{job_id}", params={"history": "full"}, headers=ALICE).json()["history"]
        assert [e["epoch"] for e in full] == list(range(1, 401))
        assert all(isinstance(e["loss"], float) for e in full)
        thin = http.get(f"/v1/jobs/{job_id}", headers=ALICE).json()  # the fast lane's default view
        assert thin["history"] == thin_history(full, THIN) and len(thin["history"]) == THIN
        routed = http.get(f"/v1/jobs/{job_id}", params={"history": "full", "x": "1"}, headers=ALICE)  # FastAPI's route
        assert routed.status_code == 200 and routed.json()["history"] == full
        assert sse_epochs(http, job_id) == full  # a finished job's replay
        assert "history" not in http.get(f"/v1/jobs/{job_id}", params={"history": "none"}, headers=ALICE).json()


@pytest.mark.both_stores
def test_delete_a_job_409_while_running_then_204_leaving_no_key_and_no_file(live_stack, redis_client, files_naming):
    r = redis_client
    with live_stack.client() as http:
        dataset_id = upload(http)
        long_id = submit(http, dataset_id, 100_000, **{"Idempotency-Key": "long-1"})
        wait_for(http, long_id, until={"running"})
        conflict = problem(http.delete(f"/v1/jobs/{long_id}", headers=ALICE), 409)
        assert "running" in conflict["detail"] and f"POST /v1/jobs/{long_id}/cancel" in conflict["detail"]
        problem(http.delete(f"/v1/jobs/{long_id}", headers=BOB), 404)  # another tenant's: not there for bob
        problem(http.delete("/v1/jobs/" + "0" * 32, headers=ALICE), 404)
        problem(http.delete("/v1/jobs/not-an-id", headers=ALICE), 404)
        assert http.post(f"/v1/jobs/{long_id}/cancel", headers=ALICE).status_code == 202
        assert wait_for(http, long_id)["status"] == "cancelled"
        assert r.hget(keys.job(long_id), "history_stored") is not None or r.llen(keys.job_history(long_id)) > 0

        done_id = submit(http, dataset_id, 300)
        assert wait_for(http, done_id)["status"] == "succeeded"
        assert files_naming(done_id) != []  # its weights and history are there
        for job_id in (long_id, done_id):
            deleted = http.delete(f"/v1/jobs/{job_id}", headers=ALICE)
            assert deleted.status_code == 204 and deleted.content == b""
            problem(http.get(f"/v1/jobs/{job_id}", headers=ALICE), 404)
            problem(http.delete(f"/v1/jobs/{job_id}", headers=ALICE), 404)
            assert mentions_after_the_worker(r, job_id) == []
            assert files_naming(job_id) == []
        listed = http.get("/v1/jobs", headers=ALICE).json()
        assert listed["total"] == 0 and listed["items"] == []
        assert r.hget(keys.BY_STATUS, "cancelled") == "0" and r.hget(keys.BY_STATUS, "succeeded") == "0"
        # the Idempotency-Key that named the deleted job went with it: the same request makes a new job
        again = submit(http, dataset_id, 100_000, **{"Idempotency-Key": "long-1"})
        assert again != long_id
        http.post(f"/v1/jobs/{again}/cancel", headers=ALICE)


@pytest.mark.both_stores
def test_delete_a_dataset_409_while_a_job_uses_it_then_204(live_stack, redis_client, files_naming):
    r = redis_client
    with live_stack.client() as http:
        dataset_id = upload(http, seed=5)
        job_id = submit(http, dataset_id, 100_000)
        wait_for(http, job_id, until={"running"})
        conflict = problem(http.delete(f"/v1/datasets/{dataset_id}", headers=ALICE), 409)
        assert job_id in conflict["detail"] and "cancel" in conflict["detail"]
        problem(http.delete(f"/v1/datasets/{dataset_id}", headers=BOB), 404)
        problem(http.delete("/v1/datasets/zz", headers=ALICE), 404)
        http.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
        wait_for(http, job_id)

        assert http.delete(f"/v1/datasets/{dataset_id}", headers=ALICE).status_code == 204
        problem(http.get(f"/v1/datasets/{dataset_id}", headers=ALICE), 404)
        deadline = time.monotonic() + 20
        while files_naming(dataset_id):  # the store's file at once; a worker's cached copy at its next sweep
            assert time.monotonic() < deadline, files_naming(dataset_id)
            time.sleep(0.2)
        assert [k for k in mentions(r, dataset_id) if k != keys.job(job_id)] == []  # the finished job names it
        refused = problem(http.post("/v1/jobs", json=_spec(dataset_id), headers=ALICE), 422)
        assert dataset_id in json.dumps(refused)
        assert http.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
        assert mentions(r, dataset_id) == []


def _spec(dataset_id: str, epochs: int = 100_000) -> dict:
    return {"dataset_id": dataset_id, "model": {"hidden_layers": [3]}, "training": {"epochs": epochs}, "device": "cpu"}


def test_a_submit_racing_a_dataset_delete_never_leaves_a_job_on_a_deleted_dataset(live_stack, redis_client):
    with live_stack.client() as http, live_stack.client() as other:
        for i in range(8):
            dataset_id = upload(http, seed=100 + i)
            answers: dict[str, int] = {}
            job: dict[str, str] = {}
            go = threading.Barrier(2)

            def post(dataset_id: str = dataset_id, answers: dict = answers, job: dict = job, go=go) -> None:
                go.wait()
                response = other.post("/v1/jobs", json=_spec(dataset_id), headers=ALICE)
                answers["submit"] = response.status_code
                if response.status_code == 202:
                    job["id"] = response.json()["id"]

            t = threading.Thread(target=post)
            t.start()
            go.wait()
            answers["delete"] = http.delete(f"/v1/datasets/{dataset_id}", headers=ALICE).status_code
            t.join()
            assert sorted(answers.values()) in ([202, 409], [204, 422]), answers
            if "id" in job:
                http.post(f"/v1/jobs/{job['id']}/cancel", headers=ALICE)
                wait_for(http, job["id"])


def test_the_workers_sweeper_deletes_jobs_past_the_retention_period(live_stack_factory, redis_client, files_naming):
    """DNNQ_RETENTION_DAYS=0.00002 (1.7 s) and a sweep every second: a finished job goes by itself."""
    stack = live_stack_factory(
        env={"DNNQ_API_KEYS": "alice:key-a"},
        worker_env={"DNNQ_RETENTION_DAYS": "0.00002", "DNNQ_LEASE_SECONDS": "2"},
    )
    with stack.client() as http:
        job_id = submit(http, upload(http), 300)
        assert wait_for(http, job_id)["status"] == "succeeded"
        assert files_naming(job_id) != []
        deadline = time.monotonic() + 30
        while http.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code != 404:
            assert time.monotonic() < deadline, "the sweeper did not delete the expired job"
            time.sleep(0.2)
        # the record goes first, then the files and the trash entry, in the same sweep
        while mentions(redis_client, job_id) or files_naming(job_id):
            assert time.monotonic() < deadline, (mentions(redis_client, job_id), files_naming(job_id))
            time.sleep(0.1)
