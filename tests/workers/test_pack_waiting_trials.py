"""Trials waiting for their turn in a sweep pack, which trains them one after another inside ONE Celery
task. Its soft/hard time limit (DNNQ_MAX_JOB_SECONDS, +60 s) is the task's, not each trial's: a trial that
trained far less than the limit must not be failed "ran past DNNQ_MAX_JOB_SECONDS" because the trials
before it used the task's time; it is handed back (checkpoint kept, attempt not spent) and resumes in a
task of its own. And a trial cancelled while it waits ends at once, not when its turn comes."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from dnnq.workers import artifacts, jobs, pack_runner, runner
from dnnq.workers.pack_runner import run_pack
from dnnq.workers.settings import WorkerSettings
from tests.workers.test_pack_runner import base_spec, dataset, make_sweep, wide_datasets, wide_gd_spec

LIMIT = 10.0  # the task's soft time limit in this test (DNNQ_MAX_JOB_SECONDS): trials hand back from 9 s


@pytest.fixture
def soft_limit():
    """Celery's soft time limit as billiard delivers it: a signal in the task's (main) thread at LIMIT."""

    def raise_soft(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGUSR1, raise_soft)
    timer = threading.Timer(LIMIT, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1))
    yield timer
    timer.cancel()
    signal.signal(signal.SIGUSR1, previous)


def limited_settings(redis_url, data_dir, *, checkpoint_every: int) -> WorkerSettings:
    """A packing worker's settings whose task time limit is LIMIT."""
    return WorkerSettings(
        redis_url=redis_url,
        data_dir=data_dir,
        lease_seconds=10,
        heartbeat_seconds=0.2,
        worker_name="packer",
        max_job_seconds=int(LIMIT),
        checkpoint_every=checkpoint_every,
    )


def pack_under_the_limit(soft_limit, first_id: str, settings: WorkerSettings, r, store) -> dict:
    """run_pack(first_id) with the task's soft time limit armed: it must not escape the pack."""
    soft_limit.start()
    try:
        return run_pack(first_id, settings=settings, r=r, store=store)
    except SoftTimeLimitExceeded:  # pragma: no cover - the limit landing outside a trial
        pytest.fail("the soft time limit escaped the pack")
    finally:
        soft_limit.cancel()


def test_a_trial_is_not_failed_for_the_time_its_pack_siblings_used(
    redis_client, store, redis_url, data_dir, soft_limit, monkeypatch
):
    settings = limited_settings(redis_url, data_dir, checkpoint_every=50)
    ds = dataset(redis_client, store)
    base = base_spec(ds, epochs=20)
    # warm up this process first (Numba, ONNX imports: seconds on a busy machine), outside the time limit
    warm = make_sweep(redis_client, base_spec(dataset(redis_client, store, seed=1), epochs=2), [{"lr": 0.1}])
    assert run_pack(warm[0], settings=settings, r=redis_client, store=store) == {warm[0]: "succeeded"}
    # trial 0 is short but its end is slow (it uses most of the task's time); trial 1 is long, trial 2 waits
    ids = make_sweep(redis_client, base, [{"lr": 0.05}, {"lr": 0.1, "epochs": 100_000}, {"lr": 0.2}])
    record_outcome = runner._record_outcome

    def slow_first(claim, *args, **kwargs):
        if claim.job_id == ids[0]:
            threading.Event().wait(LIMIT / 2)  # trial 0 takes half the task's time
        return record_outcome(claim, *args, **kwargs)

    monkeypatch.setattr(runner, "_record_outcome", slow_first)
    outcomes = pack_under_the_limit(soft_limit, ids[0], settings, redis_client, store)

    assert outcomes[ids[0]] == "succeeded"
    one = jobs.get_job(redis_client, ids[1])
    # trial 1 trained about 4 s of its own: not "ran past DNNQ_MAX_JOB_SECONDS"
    assert one["status"] != "failed", one["error"]
    assert one["status"] == "queued" and one["attempts"] == 1  # handed back, attempt kept, resumes from a checkpoint
    assert jobs.get_history(redis_client, ids[1], store=store)  # it did train, and keeps those epochs
    two = jobs.get_job(redis_client, ids[2])
    assert two["status"] == "queued" and two["attempts"] == 1  # never started: back in the queue, attempt kept


def test_a_trial_cancelled_while_it_waits_ends_at_once(redis_client, store, redis_url, data_dir, monkeypatch):
    settings = WorkerSettings(
        redis_url=redis_url, data_dir=data_dir, lease_seconds=10, heartbeat_seconds=0.1, worker_name="packer"
    )
    ds = dataset(redis_client, store)
    ids = make_sweep(redis_client, base_spec(ds, epochs=5, optimizer="adam"), [{"lr": 0.05}, {"lr": 0.1}])
    record_outcome = runner._record_outcome
    seen: dict[str, str] = {}

    def cancel_the_waiting_one(claim, *args, **kwargs):
        if claim.job_id == ids[0]:  # trial 0 is still in the pack's hands; trial 1 waits for its turn
            assert jobs.request_cancel(redis_client, ids[1]) == "cancelling"
            for _ in range(100):
                seen["status"] = jobs.get_job(redis_client, ids[1])["status"]
                if seen["status"] == "cancelled":
                    break
                threading.Event().wait(0.05)
        return record_outcome(claim, *args, **kwargs)

    monkeypatch.setattr(runner, "_record_outcome", cancel_the_waiting_one)
    outcomes = run_pack(ids[0], settings=settings, r=redis_client, store=store)
    assert seen["status"] == "cancelled"  # before trial 0 had ended, not at trial 1's turn
    assert outcomes == {ids[0]: "succeeded", ids[1]: "cancelled"}
    assert not jobs.get_history(redis_client, ids[1], store=store)  # it never trained


def test_a_stacked_packs_later_trials_are_handed_back_near_the_time_limit(
    redis_client, store, redis_url, data_dir, soft_limit, monkeypatch
):
    """The stacked form of the first test: the trials train together, so near the task's limit every trial
    but the first goes back to the queue with its checkpoint; the first keeps the whole limit (and, never
    ending, runs past it and fails, as a solo job would)."""
    monkeypatch.setattr(pack_runner, "STACK_PACKS", True)
    settings = limited_settings(redis_url, data_dir, checkpoint_every=1_000_000)  # checkpoints: the hand-backs' only
    ds, _ = wide_datasets(redis_client, store)
    warm = make_sweep(redis_client, wide_gd_spec(ds, epochs=200), [{"lr": 0.1}, {"lr": 0.2}])
    assert run_pack(warm[0], settings=settings, r=redis_client, store=store) == dict.fromkeys(warm, "succeeded")
    assert jobs.get_job(redis_client, warm[0])["timings"]["pack_stacked"] == 1.0
    ids = make_sweep(redis_client, wide_gd_spec(ds, epochs=1_000_000), [{"lr": 1e-6}, {"lr": 2e-6}, {"lr": 3e-6}])
    outcomes = pack_under_the_limit(soft_limit, ids[0], settings, redis_client, store)

    first = jobs.get_job(redis_client, ids[0])
    assert outcomes[ids[0]] == "failed" and "DNNQ_MAX_JOB_SECONDS" in first["error"]
    for job_id in ids[1:]:
        job = jobs.get_job(redis_client, job_id)
        assert outcomes[job_id] == "queued" and job["status"] == "queued", job.get("error")
        assert job["attempts"] == 1  # attempt kept: it resumes in a task of its own
        checkpoint = artifacts.load_checkpoint(store, job_id)
        assert checkpoint is not None  # written as it was handed back
        assert len(jobs.get_history(redis_client, job_id, store=store)) >= 1
    # handed back at one epoch (decided once an epoch for the stack), so their next task stacks them again
    (epoch,) = {artifacts.load_checkpoint(store, job_id).epoch for job_id in ids[1:]}
    resumed: dict = {}
    pack = threading.Thread(
        target=lambda: resumed.update(run_pack(ids[1], settings=settings, r=redis_client, store=store))
    )
    pack.start()
    deadline = time.monotonic() + 30
    while len(jobs.get_history(redis_client, ids[2], store=store)) <= epoch:
        assert time.monotonic() < deadline, "the resumed pack never trained"
        time.sleep(0.01)
    for job_id in ids[1:]:
        assert jobs.request_cancel(redis_client, job_id) == "cancelling"
    pack.join(60)
    assert not pack.is_alive() and resumed == dict.fromkeys(ids[1:], "cancelled")
    for job_id in ids[1:]:
        job = jobs.get_job(redis_client, job_id)
        assert job["timings"]["pack_stacked"] == 1.0 and job["resumed_from_epoch"] == epoch
