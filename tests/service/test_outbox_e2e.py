"""A job's Celery message through the outbox, with real workers, a real Redis and the API in-process.

The job is written into the outbox (jobs.create_job_async), then the API sends its message with Celery's
own send_task and marks it sent; a worker releasing a job sends it again the same way; the workers'
sweeper sends whatever stays unsent. Each job trains exactly once: one start, one message consumed.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from dnnq.service.app import create_app
from dnnq.workers import jobs, keys
from dnnq.workers.artifact_store import open_store

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def events(log: str, job_id: str) -> list[dict]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("job_id") == job_id]


def named(found: list[dict], name: str) -> list[dict]:
    return [e for e in found if e.get("event") == name]


def finished(r, job_id: str, timeout: float = 90) -> dict:
    return wait_for(
        lambda: (job := jobs.get_job(r, job_id)) and job["status"] in ("succeeded", "failed") and job,
        timeout,
        f"job {job_id} to finish",
    )


def submit(client: TestClient, epochs: int, **training) -> str:
    ds = client.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 400, "seed": 0})
    assert ds.status_code == 201, ds.text
    body = {
        "dataset_id": ds.json()["id"],
        "model": {"hidden_layers": [16, 8]},
        "training": {"epochs": epochs, **training},
    }
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def assert_trained_once(r, job_id: str, epochs: int, *workers, store=None) -> dict:
    """Succeeded with one attempt and every epoch once; one start and no second message in the logs."""
    job = finished(r, job_id)
    log = "".join(w.log() for w in workers)
    assert job["status"] == "succeeded", job.get("error") or log[-3000:]
    assert job["attempts"] == 1
    # `store`: where a finished job's long history moves (issue 15)
    assert [e["epoch"] for e in jobs.get_history(r, job_id, store=store)] == list(range(1, epochs + 1))
    wait_for(lambda: jobs.queue_depth(r, "default") == 0, 20, "the queue to drain")
    time.sleep(0.5)  # a second message, had there been one, would have been taken by now
    mine = events("".join(w.log() for w in workers), job_id)
    assert len(named(mine, "job.succeeded")) == 1 and not named(mine, "job.not_claimed"), mine
    assert jobs.unsent(r) == []
    return job


@pytest.mark.parametrize("fast_lane", [True, False])
def test_a_submitted_job_is_sent_by_the_api_and_trained_once(api_settings, redis_client, worker, fast_lane):
    w = worker()
    with TestClient(create_app(api_settings.model_copy(update={"fast_lane": fast_lane}))) as c:
        job_id = submit(c, epochs=5, seed=1)
        assert jobs.unsent(redis_client) == []  # sent and marked sent before the 202
    assert_trained_once(redis_client, job_id, 5, w)
    assert int(redis_client.hget(keys.STATS, "epochs_total")) == 5
    assert not named(events(w.log(), job_id), "job.sent")  # the sweeper had nothing to send


class _DiesBeforeSending:
    """The API process dying between writing the job and sending its message: nothing is sent."""

    async def send(self, job_id: str, queue: str) -> bool:
        return False

    def start(self) -> threading.Event:
        started = threading.Event()
        started.set()
        return started

    def close(self) -> None:
        pass


def test_a_job_whose_api_died_before_sending_is_sent_by_the_sweeper_and_trained_once(
    api_settings, redis_client, worker
):
    app = create_app(api_settings)
    app.state.job_desk.sender = _DiesBeforeSending()
    with TestClient(app) as c:
        w = worker(name="sweeper")
        job_id = submit(c, epochs=5, seed=2)
    assert jobs.get_job(redis_client, job_id)["status"] == "queued"
    w_log = wait_for(
        lambda: (log := w.log()) and named(events(log, job_id), "job.succeeded") and log,
        60,
        "the sweeper to send the job and a worker to train it",
    )
    (sent,) = named(events(w_log, job_id), "job.sent")
    assert sent["by"] == "sweeper"
    assert_trained_once(redis_client, job_id, 5, w)


def test_a_released_job_is_sent_again_by_its_worker_and_trained_once(api_settings, redis_client, worker):
    """A worker shutting down releases its job (queued again, attempt unspent) and sends its message
    itself: the next worker resumes it from the checkpoint, and the sweeper has nothing to send."""
    first = worker(name="first")
    with TestClient(create_app(api_settings)) as c:
        job_id = submit(c, epochs=3000, batch_size=32, seed=3)
    wait_for(lambda: len(jobs.get_history(redis_client, job_id)) >= 20, 90, "the job to train 20 epochs")
    first.stop(timeout=60)  # SIGTERM: a warm shutdown; the job stops at its epoch's end and is released
    first_log = first.log()
    assert named(events(first_log, job_id), "job.released"), first_log[-3000:]
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "queued" and job["release_reason"] == "released: worker shutting down"
    assert jobs.unsent(redis_client) == []  # sent again, and marked sent, by the releasing worker
    assert jobs.queue_depth(redis_client, "default") == 1  # its message, and only that one
    assert redis_client.llen(keys.queue("default")) == 1  # at the resumed-job priority: ahead of new jobs

    second = worker(name="second")
    done = assert_trained_once(redis_client, job_id, 3000, first, second, store=open_store(api_settings))
    assert done["resumed_from_epoch"] >= 20
    assert not named(events(first_log + second.log(), job_id), "job.sent")  # no sweeper send
