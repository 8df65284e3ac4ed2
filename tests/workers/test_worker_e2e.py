"""A real `python -m dnnq.workers` process against a real Redis: train, duplicate delivery, crash recovery."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from dnnq.workers import datasets, jobs, keys
from dnnq.workers.spec import JobSpec

pytestmark = pytest.mark.e2e


def make_dataset(r, store, m=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 2)).astype(np.float32)
    Y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)  # XOR-like quadrants: needs a hidden layer
    return datasets.save_dataset(
        r, store, tenant="public", name="quadrants", source="test", X=X, Y=Y, label_kind="binary"
    )


def submit(r, celery_client, dataset_id, **training):
    spec = JobSpec(dataset_id=dataset_id, model={"hidden_layers": [16, 8]}, training=training)
    job = jobs.create_job(r, tenant="public", spec=spec.model_dump(), queue="default", dataset_id=dataset_id)
    celery_client.send_task("dnnq.train", args=[job["id"]], queue="default")
    return job["id"]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_status(r, job_id, statuses, timeout=60):
    return wait_for(
        lambda: (j := jobs.get_job(r, job_id)) and j["status"] in statuses and j,
        timeout,
        f"job {job_id} to reach {statuses} (now {jobs.get_job(r, job_id)['status']})",
    )


def test_worker_trains_a_job_end_to_end(redis_client, store, celery_client, worker):
    w = worker()
    info = redis_client.hgetall(keys.worker(w.name))
    assert info["queues"] == "default" and info["device"] == "cpu" and int(info["pid"]) == w.pid
    assert 0 < redis_client.pttl(keys.worker(w.name)) <= 1500  # 3 x heartbeat
    ds = make_dataset(redis_client, store)
    job_id = submit(redis_client, celery_client, ds["id"], epochs=40, seed=3)
    job = wait_status(redis_client, job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job.get("error") or w.log()[-3000:]
    assert job["attempts"] == 1 and job["error"] is None and job["device"] == "cpu"
    history = jobs.get_history(redis_client, job_id)
    assert [e["epoch"] for e in history] == list(range(1, 41))
    assert job["metrics"]["final_loss"] == pytest.approx(history[-1]["loss"])
    assert job["progress"] == {"epoch": 40, "epochs": 40, "loss": history[-1]["loss"]}
    for kind, name in (("npz", "weights.npz"), ("safetensors", "weights.safetensors")):
        assert store.exists(f"jobs/{job_id}/{name}")
        assert job["artifacts"][kind] == __import__("hashlib").sha256(store.get(f"jobs/{job_id}/{name}")).hexdigest()
    with np.load(io.BytesIO(store.get(f"jobs/{job_id}/weights.npz")), allow_pickle=False) as npz:
        assert npz["W1"].shape == (16, 2) and npz["W3"].shape == (1, 8)
    assert not redis_client.sismember(keys.ACTIVE, job_id)
    assert int(redis_client.hget(keys.STATS, "epochs_total")) == 40
    time.sleep(0.3)  # Celery logs its own 'succeeded' line just after the record is final
    lines = [json.loads(line) for line in w.log().splitlines() if line.startswith("{")]
    assert {d["event"] for d in lines if d.get("job_id") == job_id} >= {"job.started", "job.succeeded"}
    trace = [d for d in lines if d.get("logger") == "celery.app.trace"]  # Celery's own task line
    assert trace and all(d.get("job_id") == job_id for d in trace), trace


def test_duplicate_send_trains_once(redis_client, store, celery_client, worker):
    worker()
    ds = make_dataset(redis_client, store)
    job_id = submit(redis_client, celery_client, ds["id"], epochs=20)
    celery_client.send_task("dnnq.train", args=[job_id], queue="default")  # duplicate delivery
    wait_status(redis_client, job_id, {"succeeded", "failed"})
    # let the duplicate message be consumed too
    wait_for(lambda: jobs.queue_depth(redis_client, "default") == 0, 20, "the queue to drain")
    time.sleep(1.0)
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert len(jobs.get_history(redis_client, job_id)) == 20
    assert int(redis_client.hget(keys.STATS, "epochs_total")) == 20


def test_cancel_running_job(redis_client, store, celery_client, worker):
    worker()
    ds = make_dataset(redis_client, store, m=2000)
    job_id = submit(redis_client, celery_client, ds["id"], epochs=100_000)
    wait_for(lambda: len(jobs.get_history(redis_client, job_id)) >= 3, 60, "a few epochs")
    assert jobs.request_cancel(redis_client, job_id) == "cancelling"
    job = wait_status(redis_client, job_id, {"cancelled"}, timeout=30)
    assert job["finished_at"] is not None
    assert 3 <= len(jobs.get_history(redis_client, job_id)) < 100_000
    assert not store.exists(f"jobs/{job_id}/weights.npz")


def test_bad_job_fails_with_readable_error(redis_client, store, celery_client, worker):
    worker()
    ds = make_dataset(redis_client, store)
    job_id = submit(redis_client, celery_client, ds["id"], epochs=5)
    store.delete(f"datasets/{ds['id']}.npz")  # the arrays vanish before the worker loads them
    job = wait_status(redis_client, job_id, {"succeeded", "failed"})
    assert job["status"] == "failed"
    assert "missing from the artifact store" in job["error"]
    assert "Traceback" not in job["error"]


def uninterrupted_parameters(r, store, dataset_id, epochs, seed):
    """The reference: the same job trained in-process without interruption."""
    from dnnq.workers.runner import run_job
    from dnnq.workers.settings import WorkerSettings

    spec = JobSpec(
        dataset_id=dataset_id,
        model={"hidden_layers": [16, 8]},
        training={"epochs": epochs, "seed": seed, "checkpoint_every": 1, "batch_size": 64},
    )
    job = jobs.create_job(r, tenant="public", spec=spec.model_dump(), queue="default", dataset_id=dataset_id)
    settings = WorkerSettings(lease_seconds=30, worker_name="reference")
    assert run_job(job["id"], settings=settings, r=r, store=store) == "succeeded"
    with np.load(io.BytesIO(store.get(f"jobs/{job['id']}/weights.npz")), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}, jobs.get_history(r, job["id"])


def test_kill_9_mid_job_second_worker_resumes_to_identical_result(redis_client, store, celery_client, worker):
    ds = make_dataset(redis_client, store, m=20_000, seed=1)  # long enough to be killed mid-run on a fast CPU
    epochs, seed = 60, 7
    first = worker()
    job_id = submit(redis_client, celery_client, ds["id"], epochs=epochs, seed=seed, checkpoint_every=1, batch_size=64)
    wait_for(
        lambda: len(jobs.get_history(redis_client, job_id)) >= 5 and store.exists(f"jobs/{job_id}/checkpoint.npz"),
        60,
        "a checkpoint",
    )
    first.kill()  # kill -9 of the main process and its pool child: no cleanup at all
    done = len(jobs.get_history(redis_client, job_id))
    assert jobs.get_job(redis_client, job_id)["status"] == "running"
    if done >= epochs:
        pytest.fail("the job finished before it could be killed; make it longer")
    worker()  # its sweeper requeues the job once the 3 s lease expires, and re-sends it
    job = wait_status(redis_client, job_id, {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job.get("error")
    assert job["attempts"] == 2
    assert 1 <= job["resumed_from_epoch"] <= done
    history = jobs.get_history(redis_client, job_id)
    assert [e["epoch"] for e in history] == list(range(1, epochs + 1))
    with np.load(io.BytesIO(store.get(f"jobs/{job_id}/weights.npz")), allow_pickle=False) as npz:
        resumed = {k: npz[k] for k in npz.files}
    reference, reference_history = uninterrupted_parameters(redis_client, store, ds["id"], epochs, seed)
    assert resumed.keys() == reference.keys()
    for k in reference:
        np.testing.assert_array_equal(resumed[k], reference[k], err_msg=k)
    assert [e["loss"] for e in history] == [e["loss"] for e in reference_history]


def test_training_child_killed_the_same_worker_resumes(redis_client, store, celery_client, worker):
    """kill -9 of only the pool child (as the OOM killer would): Celery's main process survives, its
    sweeper requeues the job when the lease expires, and a fresh child resumes from the checkpoint."""
    import os
    import signal

    w = worker()
    # 20,000 rows: ~25 ms an epoch on a Zen 5 core, so the job is still training when the child is killed
    # (with 3,000 all 60 epochs took ~0.3 s, a hair longer than it takes to see the first checkpoint)
    ds = make_dataset(redis_client, store, m=20_000, seed=2)
    job_id = submit(redis_client, celery_client, ds["id"], epochs=60, seed=1, checkpoint_every=2, batch_size=64)
    wait_for(lambda: store.exists(f"jobs/{job_id}/checkpoint.npz"), 60, "a checkpoint")
    token = redis_client.get(keys.job_lease(job_id))
    child_pid = int(token.split(":")[1])  # the token is worker_name:pid:uuid
    assert child_pid != w.pid
    os.kill(child_pid, signal.SIGKILL)
    job = wait_status(redis_client, job_id, {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job.get("error") or w.log()[-3000:]
    assert job["attempts"] == 2 and job["resumed_from_epoch"] >= 2
    assert [e["epoch"] for e in jobs.get_history(redis_client, job_id)] == list(range(1, 61))
    assert w.proc.poll() is None  # the worker itself stayed up
