"""The object store unreachable while a job trains (a TCP proxy in front of moto's S3 server, taken
down and brought back: tests/s3.py). Shorter than DNNQ_ARTIFACTS_RETRY_SECONDS: the checkpoint waits,
training waits with it, and the job ends with every epoch. Longer: the job fails with one line that
names the store, the request and the checkpoint's key; no checkpoint is dropped silently."""

from __future__ import annotations

import time

import pytest

from dnnq.workers import jobs
from tests.faults.conftest import TERMINAL, wait_for
from tests.s3 import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def proxied(s3_server):
    proxy = TcpProxy(s3_server.port)
    yield proxy
    proxy.down()


def _start_job(live_stack_factory, s3_server, proxied, epochs: int, retry_seconds: float):
    env = {
        **s3_server.env(s3_server.create_bucket(), endpoint=proxied.endpoint),
        "DNNQ_CHECKPOINT_EVERY": "1",
        "DNNQ_ARTIFACTS_RETRY_SECONDS": str(retry_seconds),
    }
    stack = live_stack_factory(env=env)
    http = stack.client()  # used, then closed, by the test
    ds = http.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 20_000, "seed": 2})
    assert ds.status_code == 201, ds.text
    spec = {
        "dataset_id": ds.json()["id"],
        "model": {"hidden_layers": [16, 8]},
        "training": {"epochs": epochs, "batch_size": 64, "seed": 1, "checkpoint_every": 1},
    }
    resp = http.post("/v1/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    return stack, http, resp.json()["id"]


def _end(http, job_id: str) -> dict:
    return wait_for(
        lambda: (j := http.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json())["status"] in TERMINAL and j,
        180,
        f"job {job_id} to end",
        every=0.3,
    )


def test_a_short_outage_delays_the_checkpoint_and_loses_nothing(live_stack_factory, s3_server, proxied, redis_client):
    epochs = 30
    stack, http, job_id = _start_job(live_stack_factory, s3_server, proxied, epochs, retry_seconds=30)
    try:
        wait_for(lambda: len(jobs.get_history(redis_client, job_id)) >= 3, 60, "training to start")
        proxied.down()
        time.sleep(1.0)  # the next checkpoint's PUT is refused and retried from here on
        stalled_at = len(jobs.get_history(redis_client, job_id))
        time.sleep(3.0)
        assert len(jobs.get_history(redis_client, job_id)) <= stalled_at + 1  # training waits for its checkpoint
        proxied.up()
        job = _end(http, job_id)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 1
        assert [e["epoch"] for e in job["history"]] == list(range(1, epochs + 1))
        assert http.get(f"/v1/jobs/{job_id}/weights").status_code == 200
    finally:
        http.close()
    assert "job.failed" not in stack.workers[0].log()


def test_a_long_outage_fails_the_job_with_one_readable_line(live_stack_factory, s3_server, proxied, redis_client):
    stack, http, job_id = _start_job(live_stack_factory, s3_server, proxied, 500, retry_seconds=1)
    try:
        wait_for(lambda: len(jobs.get_history(redis_client, job_id)) >= 3, 60, "training to start")
        proxied.down()
        job = _end(http, job_id)
    finally:
        http.close()
    assert job["status"] == "failed"
    error = job["error"]
    assert "\n" not in error
    assert f"failed PUT 'jobs/{job_id}/checkpoint.npz' (retried for 1 s)" in error, error
    assert f"The artifact store s3://{stack.env['DNNQ_ARTIFACTS_URL'][5:]} at {proxied.endpoint}" in error, error
