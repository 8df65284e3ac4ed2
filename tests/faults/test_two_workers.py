"""Fault 1: two real workers, one job. The lease makes a second delivery harmless, and a job whose
epochs outlast LEASE_SECONDS keeps its lease (the heartbeat thread renews it while fit() runs).

tests/workers/test_worker_e2e.py::test_duplicate_send_trains_once covers a duplicate consumed by the
SAME worker after the job ended; here the duplicate reaches a SECOND, idle worker while the first trains.
"""

from __future__ import annotations

import itertools
import time

import pytest

from dnnq.workers import jobs, keys
from tests.faults.conftest import create_and_send, epochs_of, log_events, make_dataset, wait_for

pytestmark = pytest.mark.e2e


def _holder(r, job_id: str) -> str:
    """Name of the worker holding the lease (tokens are worker_name:pid:uuid)."""
    token = r.get(keys.job_lease(job_id))
    assert token, f"job {job_id} has no lease"
    return token.split(":")[0]


def test_second_worker_receiving_the_same_job_does_nothing(redis_client, store, celery_client, worker):
    first, second = worker(), worker()
    ds = make_dataset(redis_client, store, m=10_000, seed=1)
    epochs = 400  # ~15 ms an epoch on a Zen 5 core: several seconds of training
    job_id = create_and_send(redis_client, celery_client, ds["id"], epochs=epochs, batch_size=64, seed=2)
    wait_for(lambda: len(epochs_of(redis_client, job_id)) >= 3, 60, "the first epochs")
    busy_name = _holder(redis_client, job_id)
    idle = second if busy_name == first.name else first
    busy = first if idle is second else second
    assert busy.name == busy_name

    celery_client.send_task("dnnq.train", args=[job_id], queue="default")  # the same id again
    # The busy worker prefetches nothing (prefetch 1, acks late), so the idle one gets the message
    # while the job still runs, and its claim fails.
    wait_for(
        lambda: any(e.get("event") == "job.not_claimed" and e.get("job_id") == job_id for e in log_events(idle.log())),
        30,
        "the idle worker to refuse the duplicate",
    )
    mid = jobs.get_job(redis_client, job_id)
    assert mid["status"] == "running", "the job ended before the duplicate arrived; make it longer"
    assert mid["attempts"] == 1
    assert _holder(redis_client, job_id) == busy.name  # the lease never moved

    job = wait_for(
        lambda: (j := jobs.get_job(redis_client, job_id)) and j["status"] in {"succeeded", "failed"} and j,
        120,
        "the job to end",
    )
    assert job["status"] == "succeeded", job.get("error") or busy.log()[-3000:]
    assert job["attempts"] == 1
    assert job["resumed_from_epoch"] in (None, 0)
    assert epochs_of(redis_client, job_id, store) == list(range(1, epochs + 1))
    assert int(redis_client.hget(keys.STATS, "epochs_total")) == epochs  # no epoch trained twice
    assert int(redis_client.hget(keys.STATS, "jobs_succeeded_total")) == 1
    started = [
        e
        for w in (first, second)
        for e in log_events(w.log())
        if e.get("event") == "job.started" and e.get("job_id") == job_id
    ]
    assert len(started) == 1, started


def test_epochs_longer_than_the_lease_are_never_taken_over(redis_client, store, celery_client, worker):
    lease_env = {"DNNQ_LEASE_SECONDS": "1", "DNNQ_HEARTBEAT_SECONDS": "0.2"}
    a, b = worker(env=lease_env), worker(env=lease_env)  # both sweep every 0.5 s
    # 2.5 s an epoch on a Zen 5 core, ~5 s on older 2-core boxes (mini-batches keep memory small): more than
    # twice the lease. (150,000 rows gave 1.25 s on Zen 5: too close to the lease for the gap check below.)
    ds = make_dataset(redis_client, store, m=300_000, n_x=20, seed=3)
    epochs = 3
    job_id = create_and_send(
        redis_client, celery_client, ds["id"], hidden=(512, 256), epochs=epochs, seed=4, batch_size=8192
    )

    # Time the epochs as they land, to prove each one outlasted the 1 s lease.
    seen: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = jobs.get_job(redis_client, job_id)
        n = len(epochs_of(redis_client, job_id))
        while len(seen) < n:
            seen.append(time.monotonic())
        if job["status"] in {"succeeded", "failed"}:
            break
        assert job["attempts"] <= 1, "a second worker took the job over"
        time.sleep(0.02)
    assert job["status"] == "succeeded", job.get("error") or a.log()[-2000:] + b.log()[-2000:]
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(seen)]
    assert gaps and min(gaps) > 1.0, f"epochs took {gaps} s: not longer than the lease, make them bigger"
    assert job["attempts"] == 1
    assert job["resumed_from_epoch"] in (None, 0)
    assert epochs_of(redis_client, job_id) == [1, 2, 3]
    for w in (a, b):
        events = [e.get("event") for e in log_events(w.log()) if e.get("job_id") == job_id]
        assert "job.requeued" not in events and "job.lease_lost" not in events, events
