"""The job state machine against a real Redis: every allowed and every refused transition."""

from __future__ import annotations

import time

import pytest

from dnnq.workers import jobs, keys
from dnnq.workers.jobs import JobConflict, JobNotFound, Status

DATASET = "ab" * 12
LEASE_MS = 5_000


def new_job(r, tenant="public"):
    return jobs.create_job(r, tenant=tenant, spec={"dataset_id": DATASET}, queue="default", dataset_id=DATASET)


def status(r, job_id):
    return jobs.get_job(r, job_id)["status"]


def running(r, token="w1"):
    job = new_job(r)
    assert jobs.claim(r, job["id"], token, LEASE_MS) is True
    return job["id"]


def test_create_and_get(redis_client):
    job = new_job(redis_client, tenant="acme")
    assert len(job["id"]) == 32
    got = jobs.get_job(redis_client, job["id"])
    assert got["status"] == "queued"
    assert got["tenant"] == "acme"
    assert got["spec"] == {"dataset_id": DATASET}
    assert got["attempts"] == 0
    assert got["started_at"] is None and got["finished_at"] is None
    assert got["created_at"].endswith("Z")


def test_get_job_hides_other_tenants_and_bad_ids(redis_client):
    job = new_job(redis_client, tenant="acme")
    assert jobs.get_job(redis_client, job["id"], tenant="other") is None
    assert jobs.get_job(redis_client, job["id"], tenant="acme")["id"] == job["id"]
    assert jobs.get_job(redis_client, "../../etc") is None
    assert jobs.get_job(redis_client, "f" * 32) is None


def test_invalid_id_never_builds_a_key(redis_client):
    with pytest.raises(jobs.InvalidId, match="24 to 32 lowercase hex"):
        jobs.claim(redis_client, "x*", "t", LEASE_MS)
    with pytest.raises(JobNotFound):
        jobs.request_cancel(redis_client, "nope")
    with pytest.raises(jobs.InvalidId):
        jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id="NOT-AN-ID")


def test_list_jobs_newest_first_with_filter(redis_client):
    ids = []
    for _ in range(3):
        ids.append(new_job(redis_client, tenant="acme")["id"])
        time.sleep(0.002)
    new_job(redis_client, tenant="other")
    jobs.claim(redis_client, ids[1], "w", LEASE_MS)
    page, total = jobs.list_jobs(redis_client, "acme")
    assert total == 3
    assert [j["id"] for j in page] == ids[::-1]
    page, total = jobs.list_jobs(redis_client, "acme", status="queued", offset=1, limit=1)
    assert total == 2
    assert [j["id"] for j in page] == [ids[0]]
    page, total = jobs.list_jobs(redis_client, "acme", status="running")
    assert [j["id"] for j in page] == [ids[1]] and total == 1


def test_status_lists_follow_every_transition_and_page_newest_first(redis_client):
    """list_jobs(status=...) pages through the tenant's per-status index, which the same scripts that
    change a status keep: after a mix of every transition (refused ones too) each status lists
    exactly the jobs whose record has it, newest first, and no other tenant's."""
    r = redis_client
    ids = []
    for _ in range(7):
        ids.append(new_job(r, tenant="acme")["id"])
        time.sleep(0.002)
    new_job(r, tenant="other")
    for i, job_id in enumerate(ids[:6]):
        assert jobs.claim(r, job_id, f"w{i}", LEASE_MS)
    assert jobs.claim(r, ids[0], "again", LEASE_MS) is False
    jobs.finish(r, ids[0], "w0", "succeeded")
    jobs.finish(r, ids[0], "w0", "failed")  # refused
    jobs.finish(r, ids[1], "w1", "failed")
    jobs.request_cancel(r, ids[2])  # running -> cancelling
    jobs.request_cancel(r, ids[4])  # running -> cancelling, then its worker dies: cancelled
    jobs.request_cancel(r, ids[6])  # queued -> cancelled
    r.delete(keys.job_lease(ids[3]), keys.job_lease(ids[4]))
    assert sorted(jobs.requeue_expired(r)) == [ids[3]]  # running -> queued
    expected = {s.value: [j for j in reversed(ids) if status(r, j) == s.value] for s in Status}
    assert expected["cancelled"] == [ids[6], ids[4]] and expected["queued"] == [ids[3]]
    for st, want in expected.items():
        page, total = jobs.list_jobs(r, "acme", status=st)
        assert ([j["id"] for j in page], total) == (want, len(want)), st
    page, total = jobs.list_jobs(r, "acme", status="cancelled", offset=1, limit=1)
    assert [j["id"] for j in page] == [ids[4]] and total == 2


def test_a_tenant_from_before_the_status_index_gets_it_built_on_first_list(redis_client):
    """Records written before the per-status indexes existed (no index keys, no marker): the first
    list builds them from the records, atomically; later transitions keep them."""
    r = redis_client
    ids = []
    for _ in range(3):
        ids.append(new_job(r, tenant="old")["id"])
        time.sleep(0.002)
    jobs.claim(r, ids[0], "w", LEASE_MS)
    r.delete(*r.keys("dnnq:tenant:old:status*"))  # as an older dnnq left them
    page, total = jobs.list_jobs(r, "old", status="queued")
    assert [j["id"] for j in page] == [ids[2], ids[1]] and total == 2
    assert r.exists(keys.status_index_marker("old"))
    jobs.finish(r, ids[0], "w", "succeeded")
    assert [j["id"] for j in jobs.list_jobs(r, "old", status="succeeded")[0]] == [ids[0]]
    assert jobs.list_jobs(r, "old", status="running") == ([], 0)


def test_claim_sets_running_lease_attempts_and_active(redis_client):
    job_id = new_job(redis_client)["id"]
    assert jobs.claim(redis_client, job_id, "w1", LEASE_MS) is True
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "running"
    assert job["attempts"] == 1
    assert job["started_at"] is not None
    assert redis_client.get(keys.job_lease(job_id)) == "w1"
    assert 0 < redis_client.pttl(keys.job_lease(job_id)) <= LEASE_MS
    assert redis_client.sismember(keys.ACTIVE, job_id)


def test_claim_twice_second_refused(redis_client):
    job_id = new_job(redis_client)["id"]
    assert jobs.claim(redis_client, job_id, "w1", LEASE_MS) is True
    assert jobs.claim(redis_client, job_id, "w2", LEASE_MS) is False
    assert redis_client.get(keys.job_lease(job_id)) == "w1"
    assert jobs.get_job(redis_client, job_id)["attempts"] == 1


def test_claim_refused_on_missing_and_terminal(redis_client):
    assert jobs.claim(redis_client, "a" * 32, "w", LEASE_MS) is False
    job_id = running(redis_client)
    assert jobs.finish(redis_client, job_id, "w1", "succeeded")
    assert jobs.claim(redis_client, job_id, "w2", LEASE_MS) is False
    assert status(redis_client, job_id) == "succeeded"


def test_renew_lease_only_with_token(redis_client):
    job_id = running(redis_client)
    assert jobs.renew_lease(redis_client, job_id, "w1", 60_000) is True
    assert redis_client.pttl(keys.job_lease(job_id)) > LEASE_MS
    assert jobs.renew_lease(redis_client, job_id, "stale", 60_000) is False
    redis_client.delete(keys.job_lease(job_id))  # expired
    assert jobs.renew_lease(redis_client, job_id, "w1", 60_000) is False


def test_record_epoch_appends_and_returns_status(redis_client):
    job_id = running(redis_client)
    entry = {"epoch": 1, "loss": 0.5, "accuracy": 0.7, "val_loss": None, "val_accuracy": None}
    assert jobs.record_epochs(redis_client, job_id, "w1", [entry], {"epoch": 1, "epochs": 3, "loss": 0.5}) == "running"
    assert jobs.get_history(redis_client, job_id) == [entry]
    assert jobs.get_job(redis_client, job_id)["progress"] == {"epoch": 1, "epochs": 3, "loss": 0.5}
    assert redis_client.hget(keys.STATS, "epochs_total") == "1"
    assert jobs.get_job(redis_client, job_id)["device"] is None
    jobs.record_epochs(redis_client, job_id, "w1", [{"epoch": 2}], {"epoch": 2}, device="gpu:0")
    assert jobs.get_job(redis_client, job_id)["device"] == "gpu:0"
    jobs.record_epochs(redis_client, job_id, "w1", [{"epoch": 3}], {"epoch": 3})  # None leaves it
    assert jobs.get_job(redis_client, job_id)["device"] == "gpu:0"
    jobs.request_cancel(redis_client, job_id)
    assert jobs.record_epochs(redis_client, job_id, "w1", [{"epoch": 2}], {"epoch": 2}) == "cancelling"


def test_record_epoch_with_stale_token_writes_nothing(redis_client):
    job_id = running(redis_client)
    assert jobs.record_epochs(redis_client, job_id, "stale", [{"epoch": 1}], {"epoch": 1}) == jobs.LEASE_LOST
    assert jobs.get_history(redis_client, job_id) == []
    assert jobs.get_job(redis_client, job_id)["progress"] is None


@pytest.mark.parametrize("final", ["succeeded", "failed"])
def test_finish_from_running(redis_client, final):
    job_id = running(redis_client)
    ok = jobs.finish(
        redis_client,
        job_id,
        "w1",
        final,
        error="boom" if final == "failed" else None,
        metrics={"final_loss": 0.1},
        artifacts={"npz": "aa"},
        device="cpu",
        timings={"fit": 1.0},
    )
    assert ok is True
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == final
    assert job["finished_at"] is not None
    assert job["metrics"] == {"final_loss": 0.1} and job["artifacts"] == {"npz": "aa"}
    assert job["device"] == "cpu" and job["timings"] == {"fit": 1.0}
    assert job["error"] == ("boom" if final == "failed" else None)
    assert not redis_client.exists(keys.job_lease(job_id))
    assert not redis_client.sismember(keys.ACTIVE, job_id)
    assert redis_client.hget(keys.STATS, f"jobs_{final}_total") == "1"


def test_finish_running_to_cancelled_refused(redis_client):
    job_id = running(redis_client)
    assert jobs.finish(redis_client, job_id, "w1", "cancelled") is False
    assert status(redis_client, job_id) == "running"


def test_finish_with_stale_token_refused(redis_client):
    job_id = running(redis_client)
    assert jobs.finish(redis_client, job_id, "stale", "succeeded", metrics={"final_loss": 1.0}) is False
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "running" and job["metrics"] is None
    assert redis_client.get(keys.job_lease(job_id)) == "w1"


def test_finish_non_terminal_status_is_a_programming_error(redis_client):
    job_id = running(redis_client)
    with pytest.raises(ValueError, match="terminal status"):
        jobs.finish(redis_client, job_id, "w1", "queued")


@pytest.mark.parametrize("final", ["cancelled", "succeeded", "failed"])
def test_finish_from_cancelling(redis_client, final):
    job_id = running(redis_client)
    assert jobs.request_cancel(redis_client, job_id) == "cancelling"
    assert jobs.finish(redis_client, job_id, "w1", final) is True
    assert status(redis_client, job_id) == final


def test_finish_twice_refused(redis_client):
    job_id = running(redis_client)
    assert jobs.finish(redis_client, job_id, "w1", "succeeded") is True
    assert jobs.finish(redis_client, job_id, "w1", "failed") is False
    assert status(redis_client, job_id) == "succeeded"
    assert redis_client.hget(keys.STATS, "jobs_failed_total") is None


def test_cancel_queued(redis_client):
    job_id = new_job(redis_client)["id"]
    assert jobs.request_cancel(redis_client, job_id) == "cancelled"
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert jobs.claim(redis_client, job_id, "w", LEASE_MS) is False


def test_cancel_running_then_again(redis_client):
    job_id = running(redis_client)
    assert jobs.request_cancel(redis_client, job_id) == "cancelling"
    assert jobs.request_cancel(redis_client, job_id) == "cancelling"
    assert status(redis_client, job_id) == "cancelling"


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_terminal_conflicts(redis_client, final):
    job_id = running(redis_client)
    if final == "cancelled":
        jobs.request_cancel(redis_client, job_id)
    jobs.finish(redis_client, job_id, "w1", final)
    with pytest.raises(JobConflict, match=f"already {final}") as info:
        jobs.request_cancel(redis_client, job_id)
    assert info.value.status == final
    assert status(redis_client, job_id) == final


def test_cancel_missing_job(redis_client):
    with pytest.raises(JobNotFound, match="No job with id"):
        jobs.request_cancel(redis_client, "c" * 32)


def test_requeue_expired(redis_client):
    alive = running(redis_client, "alive")
    dead = running(redis_client, "dead")
    dead_cancelling = running(redis_client, "dead2")
    jobs.request_cancel(redis_client, dead_cancelling)
    done = running(redis_client, "done")
    jobs.finish(redis_client, done, "done", "succeeded")
    for job_id in (dead, dead_cancelling):
        redis_client.delete(keys.job_lease(job_id))  # the worker died; its lease expired
    assert jobs.requeue_expired(redis_client) == [dead]
    assert status(redis_client, dead) == "queued"
    assert status(redis_client, dead_cancelling) == "cancelled"
    assert status(redis_client, alive) == "running"
    assert redis_client.smembers(keys.ACTIVE) == {alive}
    assert jobs.requeue_expired(redis_client) == []
    # the requeued job can be claimed again; attempts counts both starts, started_at is kept
    first_start = jobs.get_job(redis_client, dead)["started_at"]
    assert jobs.claim(redis_client, dead, "new", LEASE_MS) is True
    job = jobs.get_job(redis_client, dead)
    assert job["attempts"] == 2 and job["started_at"] == first_start


def test_requeue_expired_by_real_ttl(redis_client):
    job_id = new_job(redis_client)["id"]
    jobs.claim(redis_client, job_id, "w", 50)
    time.sleep(0.15)
    assert jobs.requeue_expired(redis_client) == [job_id]


def test_the_dead_worker_cannot_write_after_requeue(redis_client):
    job_id = running(redis_client, "old")
    redis_client.delete(keys.job_lease(job_id))
    jobs.requeue_expired(redis_client)
    assert jobs.claim(redis_client, job_id, "new", LEASE_MS)
    assert jobs.record_epochs(redis_client, job_id, "old", [{"epoch": 9}], {}) == jobs.LEASE_LOST
    assert jobs.finish(redis_client, job_id, "old", "failed", error="late") is False
    assert jobs.get_job(redis_client, job_id)["status"] == "running"


def test_record_resume_trims_history(redis_client):
    job_id = running(redis_client)
    for epoch in range(1, 6):
        jobs.record_epochs(redis_client, job_id, "w1", [{"epoch": epoch}], {"epoch": epoch})
    assert jobs.record_resume(redis_client, job_id, "stale", 3) is False
    assert len(jobs.get_history(redis_client, job_id)) == 5
    assert jobs.record_resume(redis_client, job_id, "w1", 3) is True
    assert [e["epoch"] for e in jobs.get_history(redis_client, job_id)] == [1, 2, 3]
    assert jobs.get_job(redis_client, job_id)["resumed_from_epoch"] == 3
    assert jobs.record_resume(redis_client, job_id, "w1", 1) is True
    assert [e["epoch"] for e in jobs.get_history(redis_client, job_id)] == [1]
    assert jobs.record_resume(redis_client, job_id, "w1", 0) is True  # no checkpoint: from scratch
    assert jobs.get_history(redis_client, job_id) == []
    assert jobs.get_job(redis_client, job_id)["resumed_from_epoch"] == 0


def test_release_requeues_at_once_and_keeps_the_attempt(redis_client):
    """A worker shutting down hands its job back: queued and listed in the outbox (the releasing worker
    sends its message, then marks it sent), no lease to wait for, the attempt not spent; the releasing
    worker can write nothing more."""
    r = redis_client
    job_id = running(r, "w1")
    jobs.mark_sent(r, job_id)  # its first message went out when it was created
    first_start = jobs.get_job(r, job_id)["started_at"]
    assert jobs.release(r, job_id, "stale", "released: worker shutting down") == jobs.LEASE_LOST
    assert status(r, job_id) == "running" and jobs.unsent(r) == []

    assert jobs.release(r, job_id, "w1", "released: worker shutting down") == "queued"
    job = jobs.get_job(r, job_id)
    assert job["status"] == "queued" and job["attempts"] == 1
    assert job["release_reason"] == "released: worker shutting down" and job["released_at"] is not None
    assert not r.exists(keys.job_lease(job_id)) and not r.sismember(keys.ACTIVE, job_id)
    assert jobs.unsent(r) == [job_id]  # the releasing worker (or, failing that, the sweeper) sends it
    assert jobs.queue_depth(r, "default") == 0  # the state machine sends nothing itself
    assert jobs.count_by_status(r)["queued"] == 1 and jobs.count_by_status(r)["running"] == 0
    assert [j["id"] for j in jobs.list_jobs(r, "public", status="queued")[0]] == [job_id]
    assert jobs.count_unfinished(r, "public") == 1
    # fenced: the releasing worker's token holds nothing any more
    assert jobs.record_epochs(r, job_id, "w1", [{"epoch": 9}], {}) == jobs.LEASE_LOST
    assert jobs.finish(r, job_id, "w1", "failed", error="late") is False
    assert jobs.release(r, job_id, "w1", "again") == jobs.LEASE_LOST

    # the next claim goes on with the same attempt; a later crash (lease expiry) spends one as before
    assert jobs.claim(r, job_id, "w2", LEASE_MS) is True
    job = jobs.get_job(r, job_id)
    assert job["attempts"] == 1 and job["started_at"] == first_start and job["released"] is None
    r.delete(keys.job_lease(job_id))
    assert jobs.requeue_expired(r) == [job_id]
    assert jobs.claim(r, job_id, "w3", LEASE_MS) is True
    assert jobs.get_job(r, job_id)["attempts"] == 2


def test_the_outbox_lists_queued_jobs_until_marked_sent_oldest_first(redis_client):
    """create, release and requeue_expired list a job (by Redis's clock); mark_sent takes it off;
    unsent(min_age_seconds) gives only those listed at least that long ago."""
    r = redis_client
    first, second = new_job(r)["id"], new_job(r)["id"]
    assert sorted(jobs.unsent(r)) == sorted([first, second])
    assert jobs.unsent(r, min_age_seconds=60) == []  # just listed: their sender is sending them now
    time.sleep(0.25)
    third = new_job(r)["id"]
    assert jobs.unsent(r)[-1] == third  # oldest first
    assert sorted(jobs.unsent(r, min_age_seconds=0.2)) == sorted([first, second])
    jobs.mark_sent(r, first, third)
    assert jobs.unsent(r) == [second]
    jobs.mark_sent(r)  # nothing to mark: no call
    assert jobs.claim(r, second, "dead", LEASE_MS) and jobs.unsent(r) == [second]  # a claim does not unlist
    jobs.mark_sent(r, second)
    r.delete(keys.job_lease(second))
    assert jobs.requeue_expired(r) == [second] and jobs.unsent(r) == [second]


def test_release_refused_while_cancelling_or_finished(redis_client):
    r = redis_client
    job_id = running(r)
    jobs.mark_sent(r, job_id)
    jobs.request_cancel(r, job_id)
    assert jobs.release(r, job_id, "w1", "released: worker shutting down") == "cancelling"
    job = jobs.get_job(r, job_id)
    assert job["status"] == "cancelling" and job.get("release_reason") is None and jobs.unsent(r) == []
    assert r.get(keys.job_lease(job_id)) == "w1"  # still held: the worker finishes it 'cancelled'
    assert jobs.finish(r, job_id, "w1", "cancelled") is True
    done = running(r, "w2")
    assert jobs.finish(r, done, "w2", "succeeded")
    assert jobs.release(r, done, "w2", "x") == jobs.LEASE_LOST  # the lease went with the finish
    with pytest.raises(ValueError, match="Malformed queue name"):
        jobs.create_job(r, tenant="public", spec={}, queue="dnnq:job:x", dataset_id=DATASET)


def test_status_enum_and_terminal():
    assert Status("cancelling") is Status.CANCELLING
    assert {s.value for s in jobs.TERMINAL} == {"succeeded", "failed", "cancelled"}


def test_requeue_expired_fails_a_job_that_keeps_killing_workers(redis_client):
    job_id = new_job(redis_client)["id"]
    for attempt in (1, 2):
        assert jobs.claim(redis_client, job_id, f"w{attempt}", LEASE_MS)
        redis_client.delete(keys.job_lease(job_id))  # worker died
        assert jobs.requeue_expired(redis_client, max_attempts=3) == [job_id]
    assert jobs.claim(redis_client, job_id, "w3", LEASE_MS)
    redis_client.delete(keys.job_lease(job_id))
    assert jobs.requeue_expired(redis_client, max_attempts=3) == []
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "failed" and job["attempts"] == 3 and job["finished_at"] is not None
    assert (
        "renewing its lease 3 times" in job["error"] and "lost Redis" in job["error"] and "batch_size" in job["error"]
    )
    assert not redis_client.sismember(keys.ACTIVE, job_id)
    assert redis_client.hget(keys.STATS, "jobs_failed_total") == "1"


def test_counts_by_status_follow_every_transition(redis_client):
    """count_by_status (what /metrics reads) equals the statuses of the records after a mix of
    every transition, including refused ones (which must not move a count)."""
    r = redis_client
    ids = [new_job(r)["id"] for _ in range(7)]
    for i, job_id in enumerate(ids[:6]):
        assert jobs.claim(r, job_id, f"w{i}", LEASE_MS)
    assert jobs.claim(r, ids[0], "again", LEASE_MS) is False  # refused: no count moves
    jobs.finish(r, ids[0], "w0", "succeeded")
    jobs.finish(r, ids[0], "w0", "failed")  # refused: already finished
    jobs.finish(r, ids[1], "w1", "failed")
    jobs.request_cancel(r, ids[2])  # running -> cancelling
    jobs.request_cancel(r, ids[2])  # cancelling stays
    jobs.request_cancel(r, ids[6])  # queued -> cancelled
    r.delete(keys.job_lease(ids[2]), keys.job_lease(ids[3]))  # two workers die
    assert sorted(jobs.requeue_expired(r)) == [ids[3]]  # cancelling -> cancelled, running -> queued
    actual = {s.value: 0 for s in Status}
    for job_id in ids:
        actual[status(r, job_id)] += 1
    assert jobs.count_by_status(r) == actual
    assert actual == {"queued": 1, "running": 2, "succeeded": 1, "failed": 1, "cancelling": 0, "cancelled": 2}


def test_create_job_refuses_at_the_tenant_limit_and_writes_nothing(redis_client):
    """The limit is checked in the same script that counts the job: no overshoot, no partial record."""
    for _ in range(2):
        jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DATASET, max_unfinished=2)
    keys_before = sorted(redis_client.keys("*"))
    with pytest.raises(jobs.TooManyUnfinished) as refused:
        jobs.create_job(redis_client, tenant="t", spec={}, queue="default", dataset_id=DATASET, max_unfinished=2)
    assert refused.value.unfinished == 2 and refused.value.tenant == "t"
    assert sorted(redis_client.keys("*")) == keys_before
    assert jobs.count_by_status(redis_client)["queued"] == 2 and len(jobs.unsent(redis_client)) == 2
    # another tenant has its own count
    assert (
        jobs.create_job(redis_client, tenant="u", spec={}, queue="default", dataset_id=DATASET, max_unfinished=2)[
            "status"
        ]
        == "queued"
    )


def test_create_job_async_writes_the_same_record(redis_client, redis_url):
    import asyncio

    import redis.asyncio as aioredis

    async def create() -> dict:
        ar = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await jobs.create_job_async(
                ar, tenant="t", spec={"a": 1}, queue="gpu", dataset_id=DATASET, max_unfinished=5
            )
        finally:
            await ar.aclose()

    created = asyncio.run(create())
    stored = jobs.get_job(redis_client, created["id"], "t")
    assert stored == created and stored["status"] == "queued" and stored["spec"] == {"a": 1}
    assert jobs.unsent(redis_client) == [created["id"]] and jobs.count_unfinished(redis_client, "t") == 1
    assert redis_client.zscore(keys.tenant_jobs("t"), created["id"]) > 0
