"""DNNQ_MAX_WORKERS_PER_TENANT: the cap on the worker processes one tenant's jobs occupy, against a real Redis
(claim.lua's busy set, the deferred list and the sweeper that sends deferred jobs again)."""

from __future__ import annotations

import time

from dnnq.workers import jobs, keys, recovery

DATASET = "ab" * 12
LEASE_MS = 5_000


def new_job(r, tenant):
    job = jobs.create_job(r, tenant=tenant, spec={"dataset_id": DATASET}, queue="default", dataset_id=DATASET)
    jobs.mark_sent(r, job["id"])  # its message is out, as the API leaves it
    return job["id"]


def share(tenant, member, cap=1):
    return jobs.Share(tenant, member, cap)


def claim(r, job_id, tenant, member, cap=1, lease_ms=LEASE_MS):
    return jobs.claim_within_share(r, job_id, f"{member}-{job_id}", lease_ms, share(tenant, member, cap))


def test_a_process_over_the_cap_leaves_the_job_queued_and_deferred(redis_client):
    r = redis_client
    first, second, other = new_job(r, "t"), new_job(r, "t"), new_job(r, "u")
    assert claim(r, first, "t", "A") is jobs.ClaimOutcome.CLAIMED
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.DEFERRED
    job = jobs.get_job(r, second)
    assert job["status"] == "queued" and job["attempts"] == 0 and job["started_at"] is None
    assert r.zscore(keys.DEFERRED, second) is not None
    assert r.zscore(keys.OUTBOX, second) is None
    assert not r.sismember(keys.ACTIVE, second) and r.exists(keys.job_lease(second)) == 0
    assert r.zrange(keys.tenant_busy("t"), 0, -1) == ["A"]
    # another tenant's job is within its own share
    assert claim(r, other, "u", "B") is jobs.ClaimOutcome.CLAIMED
    # the process already counted (a sweep pack's siblings) claims more of the tenant's jobs
    assert claim(r, second, "t", "A") is jobs.ClaimOutcome.CLAIMED
    assert jobs.get_job(r, second)["attempts"] == 1
    assert r.zcard(keys.tenant_busy("t")) == 1


def test_leaving_the_share_makes_room(redis_client):
    r = redis_client
    first, second = new_job(r, "t"), new_job(r, "t")
    assert claim(r, first, "t", "A") is jobs.ClaimOutcome.CLAIMED
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.DEFERRED
    jobs.release_share(r, share("t", "A"))
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.CLAIMED
    assert jobs.get_job(r, second)["status"] == "running"
    assert r.zrange(keys.tenant_busy("t"), 0, -1) == ["B"]


def test_a_killed_process_stops_counting_when_its_entry_expires(redis_client):
    r = redis_client
    first, second = new_job(r, "t"), new_job(r, "t")
    assert claim(r, first, "t", "A", lease_ms=200) is jobs.ClaimOutcome.CLAIMED
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.DEFERRED
    time.sleep(0.3)  # A was killed: nobody renews or releases its entry
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.CLAIMED
    assert r.zrange(keys.tenant_busy("t"), 0, -1) == ["B"]


def test_renewing_the_share_keeps_it_counting(redis_client):
    r = redis_client
    first, second = new_job(r, "t"), new_job(r, "t")
    assert claim(r, first, "t", "A", lease_ms=300) is jobs.ClaimOutcome.CLAIMED
    before = r.zscore(keys.tenant_busy("t"), "A")
    jobs.renew_share(r, share("t", "A"), 60_000)
    assert r.zscore(keys.tenant_busy("t"), "A") > before + 50_000
    time.sleep(0.4)
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.DEFERRED
    jobs.release_share(r, share("t", "A"))
    jobs.renew_share(r, share("t", "A"), 60_000)  # a late heartbeat does not put a released process back
    assert r.zcard(keys.tenant_busy("t")) == 0


def test_a_cap_of_two_lets_two_processes_in(redis_client):
    r = redis_client
    ids = [new_job(r, "t") for _ in range(3)]
    assert claim(r, ids[0], "t", "A", cap=2) is jobs.ClaimOutcome.CLAIMED
    assert claim(r, ids[1], "t", "B", cap=2) is jobs.ClaimOutcome.CLAIMED
    assert claim(r, ids[2], "t", "C", cap=2) is jobs.ClaimOutcome.DEFERRED


def test_without_a_cap_no_busy_set_is_written(redis_client):
    r = redis_client
    first, second = new_job(r, "t"), new_job(r, "t")
    assert claim(r, first, "t", "A", cap=0) is jobs.ClaimOutcome.CLAIMED
    assert jobs.claim_within_share(r, second, "tok", LEASE_MS, None) is jobs.ClaimOutcome.CLAIMED
    assert jobs.claim_within_share(r, second, "tok", LEASE_MS, None) is jobs.ClaimOutcome.NOT_QUEUED
    jobs.renew_share(r, share("t", "A", cap=0), LEASE_MS)
    jobs.release_share(r, share("t", "A", cap=0))
    assert list(r.scan_iter(match=f"{keys.TENANT_PREFIX}*:busy")) == []
    assert r.exists(keys.DEFERRED) == 0


def test_a_job_not_queued_is_not_claimed_nor_deferred(redis_client):
    r = redis_client
    job_id = new_job(r, "t")
    assert claim(r, job_id, "t", "A") is jobs.ClaimOutcome.CLAIMED
    assert claim(r, job_id, "t", "B") is jobs.ClaimOutcome.NOT_QUEUED
    assert r.exists(keys.DEFERRED) == 0


def test_the_sweeper_sends_a_deferred_job_again_once(redis_client):
    r = redis_client
    first, second, cancelled = new_job(r, "t"), new_job(r, "t"), new_job(r, "t")
    assert claim(r, first, "t", "A") is jobs.ClaimOutcome.CLAIMED
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.DEFERRED
    assert claim(r, cancelled, "t", "B") is jobs.ClaimOutcome.DEFERRED
    jobs.request_cancel(r, cancelled)
    sent = []
    recovery.sweep(r, lambda job_id, queue, resumed: sent.append((job_id, queue, resumed)), grace_seconds=0)
    assert sent == [(second, "default", False)]
    assert r.zcard(keys.DEFERRED) == 0  # sent, and the cancelled one unlisted
    recovery.sweep(r, lambda *a: sent.append(a), grace_seconds=0)
    assert len(sent) == 1


def test_a_job_deferred_again_while_it_is_sent_stays_listed(redis_client):
    r = redis_client
    first, second = new_job(r, "t"), new_job(r, "t")
    assert claim(r, first, "t", "A") is jobs.ClaimOutcome.CLAIMED
    assert claim(r, second, "t", "B") is jobs.ClaimOutcome.DEFERRED

    def send(job_id, queue, resumed):  # a worker takes the message at once and defers the job again
        time.sleep(0.01)
        assert claim(r, job_id, "t", "C") is jobs.ClaimOutcome.DEFERRED

    time.sleep(0.01)
    recovery.sweep(r, send, grace_seconds=0)
    assert r.zscore(keys.DEFERRED, second) is not None  # the next sweep sends it again
    # and a sender's mark_sent (the API's, right after its send) does not unlist it either
    jobs.mark_sent(r, second)
    assert r.zscore(keys.DEFERRED, second) is not None
