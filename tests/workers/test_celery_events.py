"""Celery's monitoring events (what Flower and `celery events` read), from a real `python -m dnnq.workers`
process on the real Redis, caught by Celery's own event receiver; and the job record's Celery task id."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from celery import Celery

from dnnq.workers import datasets, jobs
from dnnq.workers.celery_app import configure
from dnnq.workers.settings import WorkerSettings
from dnnq.workers.spec import JobSpec

pytestmark = pytest.mark.e2e


class EventLog:
    """Celery's app.events.Receiver in a thread, subscribed before anything is sent."""

    def __init__(self, redis_url: str, redis_client: Any) -> None:
        self.app = Celery("dnnq-monitor")
        configure(self.app, WorkerSettings(redis_url=redis_url))
        self.events: list[dict] = []
        self.receiver: Any = None
        subscribers = redis_client.execute_command("PUBSUB", "NUMPAT") + len(redis_client.pubsub_channels())
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        wait_for(  # kombu's Redis fanout is PUBLISH: an event sent before the subscription is lost
            lambda: (
                redis_client.execute_command("PUBSUB", "NUMPAT") + len(redis_client.pubsub_channels()) > subscribers
            ),
            10,
            "the event receiver to subscribe",
        )

    def _listen(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, kind: str, **fields: Any) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())]

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(5)
        self.app.close()


@pytest.fixture
def event_log(redis_url, redis_client) -> Iterator[EventLog]:
    log = EventLog(redis_url, redis_client)
    yield log
    log.stop()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(r, store, celery_client) -> tuple[str, str]:
    """A small real job and its Celery message: (job id, task id)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2)).astype(np.float32)
    ds = datasets.save_dataset(
        r, store, tenant="public", name="d", source="test", X=X, Y=(X[:, 0] > 0).astype(np.float32), label_kind="binary"
    )
    spec = JobSpec(dataset_id=ds["id"], model={"hidden_layers": [4]}, training={"epochs": 5})
    job = jobs.create_job(r, tenant="public", spec=spec.model_dump(), queue="default", dataset_id=ds["id"])
    sent = celery_client.send_task("dnnq.train", args=[job["id"]], queue="default")
    return job["id"], sent.id


def finished(r, job_id: str) -> dict:
    return wait_for(
        lambda: (j := jobs.get_job(r, job_id)) and j["status"] in ("succeeded", "failed") and j, 60, f"job {job_id}"
    )


def test_with_events_on_a_receiver_sees_the_worker_online_and_the_jobs_task(
    redis_client, store, celery_client, worker, event_log
):
    w = worker(env={"DNNQ_CELERY_EVENTS": "1"})
    online = wait_for(lambda: event_log.of("worker-online"), 10, "worker-online")
    hostname = online[0]["hostname"]
    assert hostname.startswith(f"{w.name}@")
    wait_for(lambda: event_log.of("worker-heartbeat", hostname=hostname), 10, "a worker-heartbeat (every 2 s)")

    job_id, task_id = submit(redis_client, store, celery_client)
    job = finished(redis_client, job_id)
    assert job["status"] == "succeeded", job.get("error") or w.log()[-3000:]
    assert job["celery_task_id"] == task_id  # the record names the task that delivered it

    wait_for(lambda: event_log.of("task-succeeded", uuid=task_id), 10, "task-succeeded")
    received = event_log.of("task-received", uuid=task_id)
    assert len(received) == 1 and received[0]["name"] == "dnnq.train" and job_id in received[0]["args"]
    assert received[0]["hostname"] == hostname
    assert event_log.of("task-started", uuid=task_id)
    order = [e["type"] for e in event_log.events if e.get("uuid") == task_id]
    assert order == ["task-received", "task-started", "task-succeeded"]


def test_with_events_off_the_worker_sends_none_and_still_records_the_task_id(
    redis_client, store, celery_client, worker, event_log
):
    w = worker()  # DNNQ_CELERY_EVENTS unset: the default
    job_id, task_id = submit(redis_client, store, celery_client)
    job = finished(redis_client, job_id)
    assert job["status"] == "succeeded", job.get("error") or w.log()[-3000:]
    assert job["celery_task_id"] == task_id
    time.sleep(0.5)  # an event published with the outcome would have arrived by now
    assert event_log.events == []
