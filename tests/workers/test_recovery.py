"""Lease sweeper and worker registration."""

from __future__ import annotations

import time

from dnnq.workers import jobs, keys
from dnnq.workers.recovery import (
    SEND_GRACE_SECONDS,
    Maintenance,
    host_memory_bytes,
    live_workers,
    register_worker,
    sweep,
    unregister_worker,
    worker_device,
)
from dnnq.workers.settings import WorkerSettings

DS = "ab" * 12


def test_a_job_created_but_never_sent_is_sent_by_the_sweeper(redis_client):
    """The API died between create_job and its send: the job stays in the outbox, and the first sweep
    (any worker) past the grace sends it once; a job claimed meanwhile is just taken off the outbox."""
    lost = jobs.create_job(redis_client, tenant="t", spec={}, queue="gpu", dataset_id=DS)["id"]
    started = jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DS)["id"]
    assert jobs.claim(redis_client, started, "w", 60_000)  # a duplicate message already delivered it
    assert sorted(jobs.unsent(redis_client)) == sorted([lost, started])
    sent = []
    assert (
        sweep(redis_client, lambda job_id, queue, resumed: sent.append((job_id, queue, resumed)), grace_seconds=0.0)
        == []
    )
    assert sent == [(lost, "gpu", False)]  # never started: sent as a new job
    assert jobs.unsent(redis_client) == []
    sweep(redis_client, lambda job_id, queue, resumed: sent.append((job_id, queue, resumed)), grace_seconds=0.0)
    assert sent == [(lost, "gpu", False)]  # nothing sent twice by the sweeper


def test_a_sweep_leaves_a_job_its_sender_is_still_sending_until_the_grace_is_over(redis_client):
    """A job just created is its creator's to send (the API marks it sent within milliseconds): a sweep
    sends it only once it has been in the outbox for grace_seconds, by Redis's clock."""
    job_id = jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DS)["id"]
    sent = []
    assert sweep(redis_client, lambda j, q, resumed: sent.append(j), grace_seconds=0.3) == [] and sent == []
    assert jobs.unsent(redis_client) == [job_id]
    time.sleep(0.35)
    sweep(redis_client, lambda j, q, resumed: sent.append(j), grace_seconds=0.3)
    assert sent == [job_id] and jobs.unsent(redis_client) == []
    assert SEND_GRACE_SECONDS > 1  # the default leaves the API time to send its own


def test_sweep_requeues_and_resends_to_the_jobs_queue(redis_client):
    gpu_job = jobs.create_job(redis_client, tenant="t", spec={}, queue="gpu", dataset_id=DS)["id"]
    cpu_job = jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DS)["id"]
    alive = jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DS)["id"]
    for job_id in (gpu_job, cpu_job):
        jobs.claim(redis_client, job_id, "dead", 1)
    jobs.claim(redis_client, alive, "alive", 60_000)
    time.sleep(0.05)
    sent = []
    requeued = sweep(redis_client, lambda job_id, queue, resumed: sent.append((job_id, queue, resumed)))
    assert sorted(requeued) == sorted([gpu_job, cpu_job])
    # they trained before: sent ahead of jobs that never started
    assert sorted(sent) == sorted([(gpu_job, "gpu", True), (cpu_job, "default", True)])
    assert jobs.get_job(redis_client, alive)["status"] == "running"
    assert sweep(redis_client, lambda *a: sent.append(a)) == [] and len(sent) == 2


def test_register_worker_hash_and_ttl(redis_client):
    s = WorkerSettings(worker_name="w-1", queues="gpu", cuda_visible_devices="1", lease_seconds=4, heartbeat_seconds=1)
    register_worker(redis_client, s, "2026-01-01T00:00:00.000Z")
    info = redis_client.hgetall(keys.worker("w-1"))
    assert info["name"] == "w-1" and info["queues"] == "gpu" and info["device"] == "gpu:1"
    assert info["current_job"] == "" and info["started_at"] == "2026-01-01T00:00:00.000Z"
    assert int(info["memory_bytes"]) == host_memory_bytes() > 2**30  # this host's RAM: the API's capacity check
    assert [w["name"] for w in live_workers(redis_client)] == ["w-1"]
    assert 2000 < redis_client.pttl(keys.worker("w-1")) <= 3000
    redis_client.hset(keys.worker("w-1"), "current_job", "c" * 32)
    register_worker(redis_client, s, "2026-01-01T00:00:00.000Z")  # a refresh keeps the child's field
    assert redis_client.hget(keys.worker("w-1"), "current_job") == "c" * 32
    assert worker_device(WorkerSettings(queues="default")) == "cpu"


def test_live_workers_reads_the_index_and_prunes_dead_names(redis_client):
    """O(workers): the index lists names; a name whose hash expired (worker died) is dropped."""
    for name in ("a", "b"):
        register_worker(redis_client, WorkerSettings(worker_name=name, heartbeat_seconds=5), "2026-01-01T00:00:00Z")
    for i in range(300):  # job keys do not slow it down: no keyspace SCAN
        redis_client.set(keys.job(f"{i:032x}"), "x")
    assert sorted(w["name"] for w in live_workers(redis_client)) == ["a", "b"]
    redis_client.delete(keys.worker("a"))  # its TTL ran out
    assert [w["name"] for w in live_workers(redis_client)] == ["b"]
    assert redis_client.smembers(keys.WORKERS) == {"b"}
    unregister_worker(redis_client, WorkerSettings(worker_name="b"))
    assert live_workers(redis_client) == [] and redis_client.smembers(keys.WORKERS) == set()


def test_maintenance_thread_registers_sweeps_and_unregisters(redis_client):
    s = WorkerSettings(worker_name="maint", lease_seconds=0.4, heartbeat_seconds=0.1)
    job_id = jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DS)["id"]
    jobs.claim(redis_client, job_id, "dead", 100)
    sent = []
    thread = Maintenance(redis_client, s, lambda j, q, resumed: sent.append(j))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sent == [job_id]
        assert redis_client.exists(keys.worker("maint"))
    finally:
        thread.stop()
    assert not thread.is_alive()
    assert not redis_client.exists(keys.worker("maint"))
