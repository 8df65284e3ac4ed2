"""Fault 2: the real redis-server is stopped and started again (same port, same data dir, AOF on)
while one job trains and others wait in the queue. Nothing is lost, every job ends succeeded exactly
once, the API answers 503 problem+json while Redis is away and recovers by itself, and the worker
reconnects by itself (Celery's broker connection, our heartbeat and maintenance threads)."""

from __future__ import annotations

import time

import httpx
import pytest

from dnnq.workers import jobs, keys
from tests.faults.conftest import TERMINAL, _signal_group, log_events, start_api, start_worker, wait_for

pytestmark = pytest.mark.e2e

DOWN_SECONDS = 6.0  # longer than the 3 s lease and than redis-py's retries of one command


def _assert_503_problem(resp: httpx.Response, what: str) -> None:
    assert resp.status_code == 503, f"{what}: {resp.status_code} {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/problem+json"), what
    body = resp.json()
    assert body["status"] == 503 and body["title"] == "Service Unavailable", body
    assert "Redis" in body["detail"] and "retry" in body["detail"].lower(), body
    assert resp.headers.get("retry-after"), what


def test_redis_restart_loses_no_job(own_redis, own_workers, tmp_path):
    import signal

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    api, base_url, _ = start_api(own_redis.url, data_dir, tmp_path / "api.log", env={"DNNQ_REDIS_SOCKET_TIMEOUT": "1"})
    try:
        w = start_worker(own_redis.url, data_dir, tmp_path)
        own_workers.append(w)
        r = own_redis.client()
        with httpx.Client(base_url=base_url, timeout=60) as http:
            ds = http.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 10_000, "seed": 1})
            assert ds.status_code == 201, ds.text
            ds_id = ds.json()["id"]

            def submit(epochs: int, **training) -> str:
                resp = http.post(
                    "/v1/jobs",
                    json={
                        "dataset_id": ds_id,
                        "model": {"hidden_layers": [16, 8]},
                        "training": {"epochs": epochs, "seed": 5, **training},
                    },
                )
                assert resp.status_code == 202, resp.text
                return resp.json()["id"]

            long_epochs = 500
            long_id = submit(long_epochs, batch_size=64, checkpoint_every=5)
            queued = [submit(30) for _ in range(3)]  # one worker, concurrency 1: these wait
            wait_for(lambda: len(jobs.get_history(r, long_id)) >= 20, 60, "the long job to train a while")
            assert {jobs.get_job(r, q)["status"] for q in queued} == {"queued"}

            own_redis.stop()
            down_at = time.monotonic()
            # While Redis is away: 503 problem+json for reads and writes, /healthz 200, /readyz 503.
            t0 = time.monotonic()
            _assert_503_problem(http.get(f"/v1/jobs/{long_id}"), "GET /v1/jobs/{id}")
            one_call_s = time.monotonic() - t0
            _assert_503_problem(http.get("/v1/jobs"), "GET /v1/jobs")
            _assert_503_problem(
                http.post(
                    "/v1/jobs", json={"dataset_id": ds_id, "model": {"hidden_layers": [4]}, "training": {"epochs": 2}}
                ),
                "POST /v1/jobs",
            )
            assert http.get("/healthz").status_code == 200
            ready = http.get("/readyz")
            assert ready.status_code == 503 and any("redis" in m for m in ready.json()["missing"]), ready.text
            time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
            assert w.proc.poll() is None, "the worker died while Redis was away:\n" + w.log()[-3000:]

            own_redis.start()
            # The same API process recovers by itself.
            wait_for(lambda: http.get(f"/v1/jobs/{long_id}").status_code == 200, 30, "the API to answer again")
            wait_for(lambda: http.get("/readyz").status_code == 200, 30, "/readyz to be ready again", every=0.2)
            # A job submitted after the restart also runs (the API's broker connection came back too).
            after_id = submit(10)

            every_id = [long_id, *queued, after_id]
            wait_for(
                lambda: all(
                    http.get(f"/v1/jobs/{j}", params={"history": "none"}).json()["status"] in TERMINAL for j in every_id
                ),
                240,
                "every job to end",
                every=0.5,
            )
            for job_id in every_id:
                job = http.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json()
                assert job["status"] == "succeeded", (job_id, job["error"], w.log()[-3000:])
                epochs = job["spec"]["training"]["epochs"]
                assert [e["epoch"] for e in job["history"]] == list(range(1, epochs + 1)), job_id
            long_job = jobs.get_job(r, long_id)
            # It either rode out the outage (1 start) or lost its lease and resumed from a checkpoint.
            assert long_job["attempts"] in (1, 2)
            if long_job["attempts"] == 2:
                assert long_job["resumed_from_epoch"] >= 5
            for job_id in every_id[1:]:
                assert jobs.get_job(r, job_id)["attempts"] == 1
            stats = r.hgetall(keys.STATS)
            assert int(stats["jobs_succeeded_total"]) == len(every_id)  # each ended succeeded exactly once
            assert int(stats.get("jobs_failed_total", 0)) == 0
        assert w.proc.poll() is None
        # The outage is logged as Redis's, never as a failure of the job.
        events = [e.get("event") for e in log_events(w.log()) if e.get("job_id") == long_id]
        assert "job.failed" not in events, events
        print(
            f"\nredis down {DOWN_SECONDS:.0f} s; one API call while down took {one_call_s:.2f} s; "
            f"long job attempts={long_job['attempts']} resumed_from={long_job['resumed_from_epoch']}"
        )
    finally:
        _signal_group(api, signal.SIGKILL)
        api.wait(10)
