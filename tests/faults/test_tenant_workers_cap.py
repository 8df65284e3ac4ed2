"""DNNQ_MAX_WORKERS_PER_TENANT with two real workers: a tenant capped at one worker leaves the other worker
to another tenant's job, its own second job waiting queued until its first ends, and each job ends once."""

from __future__ import annotations

import pytest

from dnnq.workers import jobs, keys
from dnnq.workers.spec import JobSpec
from tests.faults.conftest import log_events, make_dataset, wait_for

pytestmark = pytest.mark.e2e


def submit(r, celery_app, tenant: str, dataset_id: str, **training) -> str:
    spec = JobSpec(dataset_id=dataset_id, model={"hidden_layers": [16, 8]}, training=training)
    job = jobs.create_job(r, tenant=tenant, spec=spec.model_dump(), queue="default", dataset_id=dataset_id)
    celery_app.send_task("dnnq.train", args=[job["id"]], queue="default")
    jobs.mark_sent(r, job["id"])
    return job["id"]


def status(r, job_id: str) -> str:
    return jobs.get_job(r, job_id)["status"]


def ended(r, job_id: str) -> bool:
    return status(r, job_id) in {"succeeded", "failed", "cancelled"}


def test_a_capped_tenant_leaves_the_second_worker_to_another(redis_client, store, celery_client, worker):
    r = redis_client
    env = {"DNNQ_MAX_WORKERS_PER_TENANT": "1"}
    workers = [worker(env=env), worker(env=env)]
    ds = make_dataset(r, store, m=2_000, seed=1)
    long = {"epochs": 100_000, "batch_size": 64, "seed": 2}  # runs until cancelled

    a1 = submit(r, celery_client, "a", ds["id"], **long)
    wait_for(lambda: status(r, a1) == "running", 60, "tenant a's first job to start")
    a2 = submit(r, celery_client, "a", ds["id"], **long)
    wait_for(
        lambda: any(
            e.get("event") == "job.deferred" and e.get("job_id") == a2 for w in workers for e in log_events(w.log())
        ),
        30,
        "tenant a's second job to be deferred",
    )
    assert status(r, a2) == "queued"
    assert r.zcard(keys.tenant_busy("a")) == 1

    b1 = submit(r, celery_client, "b", ds["id"], epochs=5, seed=3)
    wait_for(lambda: ended(r, b1), 60, "tenant b's job to end")
    assert status(r, b1) == "succeeded"
    assert status(r, a2) == "queued"  # still: the idle worker does not take it while a1 trains
    assert jobs.get_job(r, a2)["attempts"] == 0
    assert status(r, a1) == "running"

    jobs.request_cancel(r, a1)
    wait_for(lambda: ended(r, a1), 30, "tenant a's first job to stop")
    # the sweeper sends a2 again (every lease / 2 = 1.5 s here) and a worker now claims it
    wait_for(lambda: status(r, a2) == "running", 30, "tenant a's second job to start")
    jobs.request_cancel(r, a2)
    wait_for(lambda: ended(r, a2), 30, "tenant a's second job to stop")
    wait_for(lambda: r.zcard(keys.tenant_busy("a")) == 0, 10, "tenant a's worker to leave its share")

    for job_id, outcome in ((a1, "cancelled"), (a2, "cancelled"), (b1, "succeeded")):
        job = jobs.get_job(r, job_id)
        assert job["status"] == outcome, job.get("error")
        assert job["attempts"] == 1
    events = [e for w in workers for e in log_events(w.log())]
    for job_id in (a1, a2, b1):
        assert sum(e.get("event") == "job.started" and e.get("job_id") == job_id for e in events) == 1
    assert sum(e.get("event") == "job.cancelled" for e in events) == 2
    assert sum(e.get("event") == "job.succeeded" for e in events) == 1
