"""Finished jobs' histories moving to the artifact store, DELETE's state-machine side (jobs.delete_job,
datasets.delete_dataset), the trash and retention, against a real Redis and a real store."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from dnnq.workers import datasets, history_store, jobs, keys, recovery, trash
from dnnq.workers.history_store import HISTORY_INLINE_MAX, history_key
from dnnq.workers.settings import WorkerSettings

DATASET = "ab" * 12
LEASE_MS = 60_000
LONG = HISTORY_INLINE_MAX * 3 + 7


def entries(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    return [
        {
            "epoch": i + 1,
            "loss": float(rng.random()),
            "accuracy": float(rng.random()),
            "val_loss": None if i % 5 else float(rng.random()),
            "val_accuracy": None,
        }
        for i in range(n)
    ]


def trained(r, n_epochs: int, *, tenant: str = "public", dataset_id: str = DATASET, **create) -> tuple[str, str]:
    """A running job with n_epochs written as the worker writes them; (job id, lease token)."""
    job_id = jobs.create_job(r, tenant=tenant, spec={}, queue="default", dataset_id=dataset_id, **create)["id"]
    token = f"w-{job_id[:6]}"
    assert jobs.claim(r, job_id, token, LEASE_MS)
    history = entries(n_epochs)
    for start in range(0, n_epochs, 100):
        chunk = history[start : start + 100]
        jobs.record_epochs(r, job_id, token, chunk, {"epoch": chunk[-1]["epoch"], "epochs": n_epochs, "loss": 0.1})
    return job_id, token


def keys_naming(r, text: str) -> list[str]:
    """Every key whose name or content mentions `text` (the test Redis holds only this test's keys)."""
    found = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            content = [r.get(key)]
        elif kind == "hash":
            content = [x for pair in r.hgetall(key).items() for x in pair]
        elif kind == "list":
            content = r.lrange(key, 0, -1)
        elif kind == "set":
            content = list(r.smembers(key))
        elif kind == "zset":
            content = r.zrange(key, 0, -1)
        else:
            content = []
        if text in key or any(text in (c or "") for c in content):
            found.append(key)
    return found


@pytest.fixture
def files_under(store, artifact_backend, request):
    """files_under(text): the names in the artifact store that contain text (files under its root, or the
    keys of the test's bucket when the test runs on the S3 store too)."""
    if artifact_backend == "s3":
        server = request.getfixturevalue("s3_server")
        return lambda text: [k for k in server.keys(store.bucket) if text in k]
    return lambda text: [str(p) for p in store.root.rglob("*") if text in str(p)]


# --- a finished job's history ----------------------------------------------------------------


@pytest.mark.both_stores
def test_finish_with_the_store_moves_a_long_history_in_its_own_step(redis_client, store):
    r = redis_client
    job_id, token = trained(r, LONG)
    before = jobs.get_history(r, job_id)
    assert len(before) == LONG
    assert jobs.finish(r, job_id, token, "succeeded", metrics={"final_loss": 0.1}, store=store)

    assert not r.exists(keys.job_history(job_id))
    job = jobs.get_job(r, job_id)
    assert job["history_stored"] == LONG
    assert store.exists(history_key(job_id))
    history_store.forget(job_id)  # read the file, not this process's cache
    assert jobs.get_history(r, job_id, store=store) == before
    assert jobs.get_history(r, job_id, store=store, job=job) == before
    assert jobs.get_history(r, job_id, 5, 9, store=store) == before[5:10]  # LRANGE's slice, as SSE asks
    assert jobs.get_history(r, job_id, LONG - 2, -1, store=store) == before[-2:]
    assert jobs.get_history(r, job_id, LONG + 5, -1, store=store) == []
    assert r.zscore(keys.HISTORY_MOVES, job_id) is None
    assert r.zscore(keys.FINISHED, job_id) is not None
    assert r.memory_usage(keys.job(job_id), samples=0) < 8 * 1024  # the record alone


def test_the_async_reader_answers_the_same_moved_history(redis_client, redis_url, store):
    import asyncio

    import redis.asyncio

    r = redis_client
    job_id, token = trained(r, LONG)
    before = jobs.get_history(r, job_id)
    assert jobs.finish(r, job_id, token, "failed", error="x", store=store)

    async def read() -> tuple[list, list]:
        ar = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            return (
                await jobs.get_history_async(ar, job_id, store=store),
                await jobs.get_history_async(ar, job_id, 10, 19, store=store),
            )
        finally:
            await ar.aclose()

    whole, part = asyncio.run(read())
    assert whole == before and part == before[10:20]


def test_a_reader_holding_a_record_read_before_the_move_still_finds_the_history(redis_client, store):
    r = redis_client
    job_id, token = trained(r, LONG)
    stale = jobs.get_job(r, job_id)  # read while running: it says nothing of a move
    before = jobs.get_history(r, job_id, job=stale)
    assert jobs.finish(r, job_id, token, "succeeded", store=store)
    assert jobs.get_history(r, job_id, store=store, job=stale) == before
    fresh = jobs.get_job(r, job_id)
    assert jobs.get_history(r, job_id, 100, 199, store=store, job=fresh) == before[100:200]


def test_a_short_history_stays_in_redis_and_writes_no_file(redis_client, store):
    r = redis_client
    job_id, token = trained(r, HISTORY_INLINE_MAX)
    assert jobs.finish(r, job_id, token, "succeeded", store=store)
    assert r.llen(keys.job_history(job_id)) == HISTORY_INLINE_MAX
    assert not store.exists(history_key(job_id))
    assert r.zscore(keys.HISTORY_MOVES, job_id) is None
    assert jobs.get_job(r, job_id).get("history_stored") is None


def test_a_finish_without_the_store_leaves_the_move_to_the_sweeper(redis_client, store):
    r = redis_client
    job_id, token = trained(r, LONG)
    before = jobs.get_history(r, job_id)
    assert jobs.finish(r, job_id, token, "succeeded")
    assert r.zscore(keys.HISTORY_MOVES, job_id) is not None
    assert jobs.get_history(r, job_id) == before  # meanwhile Redis answers

    assert recovery.housekeeping(r, store)["histories_moved"] == 1
    assert not r.exists(keys.job_history(job_id)) and r.zscore(keys.HISTORY_MOVES, job_id) is None
    history_store.forget(job_id)
    assert jobs.get_history(r, job_id, store=store) == before
    assert recovery.housekeeping(r, store)["histories_moved"] == 0


def test_a_crash_between_the_file_and_the_trim_loses_nothing(redis_client, store):
    """The mover died after writing the file: Redis still has every entry and the job stays listed, so
    readers answer from Redis and the next sweep finishes the move; a list that differs from the file
    is never dropped."""
    r = redis_client
    job_id, token = trained(r, LONG)
    before = jobs.get_history(r, job_id)
    assert jobs.finish(r, job_id, token, "succeeded")
    history_store.write_history(store, job_id, r.lrange(keys.job_history(job_id), 0, 10))  # a stale file
    assert jobs.get_history(r, job_id, store=store) == before
    from dnnq.workers.scripts import get as script

    changed = script("move_history")(r, [keys.job(job_id), keys.job_history(job_id), keys.HISTORY_MOVES], [job_id, 11])
    assert changed == "changed" and r.llen(keys.job_history(job_id)) == LONG

    assert jobs.move_history(r, store, job_id) == "moved"
    history_store.forget(job_id)
    assert jobs.get_history(r, job_id, store=store) == before


def test_jobs_the_sweeper_ends_have_their_histories_moved(redis_client, store):
    r = redis_client
    job_id, _ = trained(r, LONG)
    before = jobs.get_history(r, job_id)
    r.delete(keys.job_lease(job_id))  # the worker died
    assert jobs.requeue_expired(r, max_attempts=1) == []  # -> failed: it started once already
    assert jobs.get_job(r, job_id)["status"] == "failed"
    assert r.zscore(keys.HISTORY_MOVES, job_id) is not None
    recovery.housekeeping(r, store)
    history_store.forget(job_id)
    assert jobs.get_history(r, job_id, store=store) == before
    assert not r.exists(keys.job_history(job_id))


# --- deleting a job ---------------------------------------------------------------------------


@pytest.mark.both_stores
def test_delete_leaves_no_key_and_no_file(redis_client, store, files_under):
    r = redis_client
    idem = keys.idempotency("acme", "jobs", "k1")
    job_id, token = trained(r, LONG, tenant="acme", idempotency_key=idem)
    r.set(idem, json.dumps({"body_sha256": "x", "id": job_id}))
    other, other_token = trained(r, 3, tenant="acme")
    store.put(f"jobs/{job_id}/weights.npz", b"w")
    store.put(f"jobs/{job_id}/model.json", b"{}")
    store.put(f"jobs/{job_id}/checkpoint.npz", b"c")
    assert jobs.finish(r, job_id, token, "succeeded", store=store)
    assert jobs.finish(r, other, other_token, "succeeded", store=store)
    assert jobs.count_by_status(r)["succeeded"] == 2
    assert jobs.list_jobs(r, "acme", status="succeeded")[1] == 2

    jobs.delete_job(r, store, job_id, "acme")

    assert keys_naming(r, job_id) == []
    assert files_under(job_id) == []
    assert jobs.count_by_status(r)["succeeded"] == 1
    assert jobs.list_jobs(r, "acme")[1] == 1 and jobs.list_jobs(r, "acme", status="succeeded")[1] == 1
    assert jobs.get_job(r, other)["status"] == "succeeded"  # the other job untouched
    with pytest.raises(jobs.JobNotFound):
        jobs.delete_job(r, store, job_id, "acme")


def test_delete_refuses_unfinished_jobs_and_other_tenants(redis_client, store):
    r = redis_client
    queued = jobs.create_job(r, tenant="acme", spec={}, queue="default", dataset_id=DATASET)["id"]
    running, token = trained(r, 3, tenant="acme")
    for job_id, status in ((queued, "queued"), (running, "running")):
        with pytest.raises(jobs.JobConflict) as conflict:
            jobs.delete_job(r, store, job_id, "acme")
        assert conflict.value.status == status
        assert f"POST /v1/jobs/{job_id}/cancel" in str(conflict.value)
    assert jobs.request_cancel(r, running) == "cancelling"
    with pytest.raises(jobs.JobConflict):
        jobs.delete_job(r, store, running, "acme")
    assert jobs.get_job(r, running)["status"] == "cancelling"  # nothing written by the refusals
    assert r.llen(keys.job_history(running)) == 3

    assert jobs.finish(r, running, token, "cancelled", store=store)
    with pytest.raises(jobs.JobNotFound):
        jobs.delete_job(r, store, running, "bob")  # another tenant's: as if absent
    with pytest.raises(jobs.JobNotFound):
        jobs.delete_job(r, store, "not-an-id", "acme")
    jobs.delete_job(r, store, running, "acme")
    assert jobs.request_cancel(r, queued) == "cancelled"
    jobs.delete_job(r, store, queued, "acme")
    assert keys_naming(r, running) == [] and keys_naming(r, queued) == []


def test_a_finish_racing_a_delete_is_one_or_the_other(redis_client, store, files_under):
    """A delete while the worker finishes: before the finish it is refused (running), after it the job
    and everything the finish wrote go; and a worker that claims a deleted job finds nothing to claim."""
    r = redis_client
    for _ in range(20):
        job_id, token = trained(r, LONG)
        outcome: dict[str, object] = {}

        def delete(job_id: str = job_id, outcome: dict = outcome) -> None:
            try:
                jobs.delete_job(r, store, job_id)
                outcome["deleted"] = True
            except jobs.JobConflict:
                outcome["deleted"] = False

        t = threading.Thread(target=delete)
        t.start()
        finished = jobs.finish(r, job_id, token, "succeeded", store=store)
        t.join()
        assert finished
        if outcome["deleted"]:
            assert keys_naming(r, job_id) == [] and files_under(job_id) == []
        else:
            assert jobs.get_job(r, job_id)["history_stored"] == LONG
            jobs.delete_job(r, store, job_id)
        assert not jobs.claim(r, job_id, "late", LEASE_MS)
        assert keys_naming(r, job_id) == [] and files_under(job_id) == []


@pytest.mark.both_stores
def test_a_delete_during_a_pending_move_leaves_the_file_to_the_sweeper(redis_client, store, files_under):
    r = redis_client
    job_id, token = trained(r, LONG)
    assert jobs.finish(r, job_id, token, "succeeded")  # listed for the sweeper's move
    history_store.write_history(store, job_id, ["{}"])  # a mover writing right now
    jobs.delete_job(r, store, job_id)
    assert r.zscore(keys.TRASH, f"jobs/{job_id}/") is not None  # waits the grace
    history_store.write_history(store, job_id, ["{}"])  # the mover's file lands after the delete
    assert trash.empty(r, store) == 0  # not due yet
    r.zadd(keys.TRASH, {f"jobs/{job_id}/": 0})  # the grace has passed
    assert recovery.housekeeping(r, store)["trash_removed"] == 1
    assert keys_naming(r, job_id) == [] and files_under(job_id) == []


def test_the_mover_removes_its_file_when_the_job_was_deleted(redis_client, store, files_under):
    r = redis_client
    job_id, token = trained(r, LONG)
    assert jobs.finish(r, job_id, token, "succeeded")
    raw = r.lrange(keys.job_history(job_id), 0, -1)
    jobs.delete_job(r, store, job_id)
    r.rpush(keys.job_history(job_id), *raw)  # as if read before the delete
    assert jobs.move_history(r, store, job_id) == "missing"
    r.delete(keys.job_history(job_id))
    r.zrem(keys.TRASH, f"jobs/{job_id}/")
    assert keys_naming(r, job_id) == [] and files_under(job_id) == []


# --- retention --------------------------------------------------------------------------------


def test_retention_deletes_jobs_that_ended_long_enough_ago(redis_client, store, files_under):
    r = redis_client
    old, token = trained(r, LONG)
    assert jobs.finish(r, old, token, "succeeded", store=store)
    recent, token2 = trained(r, 3)
    assert jobs.finish(r, recent, token2, "failed", store=store)
    still_running, _ = trained(r, 3)
    r.zadd(keys.FINISHED, {old: 1_000})  # ended in 1970

    assert recovery.housekeeping(r, store, retention_seconds=0)["jobs_expired"] == 0  # 0: kept for ever
    assert recovery.housekeeping(r, store, retention_seconds=3600)["jobs_expired"] == 1
    assert keys_naming(r, old) == [] and files_under(old) == []
    assert jobs.get_job(r, recent)["status"] == "failed"
    assert recovery.housekeeping(r, store, retention_seconds=1e-3)["jobs_expired"] == 1
    assert jobs.get_job(r, recent) is None
    assert jobs.get_job(r, still_running)["status"] == "running"  # never finished: never expires
    r.zadd(keys.FINISHED, {"f" * 32: 0})  # listed, but its record is gone
    recovery.housekeeping(r, store, retention_seconds=1)
    assert r.zscore(keys.FINISHED, "f" * 32) is None


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf", "1e308"])
def test_a_bad_retention_period_refuses_to_start_in_one_line(value, monkeypatch):
    monkeypatch.setenv("DNNQ_RETENTION_DAYS", value)
    with pytest.raises(ValueError):
        WorkerSettings()
    done = subprocess.run(
        [sys.executable, "-m", "dnnq.workers"],
        env={**_plain_env(), "DNNQ_RETENTION_DAYS": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnnq worker: DNNQ_RETENTION_DAYS=")


def test_retention_days_accepts_fractions_and_zero():
    assert WorkerSettings(retention_days=0).retention_days == 0
    assert WorkerSettings(retention_days=0.5).retention_days == 0.5
    assert WorkerSettings(retention_days=36_500).retention_days == 36_500


def _plain_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}


# --- deleting a dataset -----------------------------------------------------------------------


def _dataset(r, store, tenant="acme", seed=0) -> str:
    X = np.random.default_rng(seed).random((20, 3))
    Y = (X[:, 0] > 0.5).astype(int)
    rec = datasets.save_dataset(r, store, tenant=tenant, name="d", source="test", X=X, Y=Y, label_kind="binary")
    return rec["id"]


@pytest.mark.both_stores
def test_delete_dataset_refused_while_a_job_uses_it(redis_client, store, files_under):
    r = redis_client
    ds = _dataset(r, store)
    val = _dataset(r, store, seed=1)
    job = jobs.create_job(
        r, tenant="acme", spec={}, queue="default", dataset_id=ds, validation_dataset_id=val, require_datasets=True
    )
    for dataset_id in (ds, val):
        with pytest.raises(datasets.DatasetInUse) as in_use:
            datasets.delete_dataset(r, store, dataset_id, "acme")
        assert in_use.value.job_id == job["id"]
    with pytest.raises(datasets.DatasetNotFound):
        datasets.delete_dataset(r, store, ds, "bob")
    assert jobs.request_cancel(r, job["id"]) == "cancelled"

    datasets.delete_dataset(r, store, ds, "acme")
    assert datasets.get_dataset(r, ds) is None
    assert keys_naming(r, ds) == [keys.job(job["id"])]  # only the finished job names it
    assert files_under(ds) == []
    with pytest.raises(datasets.DatasetNotFound):
        datasets.delete_dataset(r, store, ds, "acme")
    with pytest.raises(jobs.DatasetMissing):
        jobs.create_job(r, tenant="acme", spec={}, queue="default", dataset_id=ds, require_datasets=True)
    assert jobs.count_unfinished(r, "acme") == 0  # the refused submit wrote nothing


def test_submit_and_delete_of_a_dataset_never_both_win(redis_client, store):
    """A submit naming the dataset and its delete at the same moment: either the job exists and the delete
    was refused, or the delete won and the submit was refused; never a job on a deleted dataset."""
    r = redis_client
    outcomes = set()
    for i in range(30):
        ds = _dataset(r, store, seed=100 + i)
        result: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def submit(ds: str = ds, result: dict = result, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                result["job"] = jobs.create_job(
                    r, tenant="acme", spec={}, queue="default", dataset_id=ds, require_datasets=True
                )["id"]
            except jobs.DatasetMissing:
                result["job"] = None

        t = threading.Thread(target=submit)
        t.start()
        barrier.wait()
        try:
            datasets.delete_dataset(r, store, ds, "acme")
            deleted = True
        except datasets.DatasetInUse:
            deleted = False
        t.join()
        assert deleted != bool(result["job"])
        assert (datasets.get_dataset(r, ds) is None) == deleted
        if result["job"]:
            jobs.request_cancel(r, str(result["job"]))
        outcomes.add(deleted)
    assert jobs.count_unfinished(r, "acme") == 0


def test_store_delete_prefix(store):
    store.put("jobs/" + "a" * 32 + "/weights.npz", b"1")
    store.put("jobs/" + "a" * 32 + "/history.jsonl.gz", b"2")
    store.put("jobs/" + "b" * 32 + "/weights.npz", b"3")
    assert store.delete_prefix("jobs/" + "a" * 32 + "/") == 2
    assert not (store.root / "jobs" / ("a" * 32)).exists()
    assert store.exists("jobs/" + "b" * 32 + "/weights.npz")
    assert store.delete_prefix("jobs/" + "c" * 32 + "/") == 0


def test_the_trash_keeps_the_file_of_a_dataset_stored_again(redis_client, store):
    """A crash left a deleted dataset's file in the trash, and the same content was uploaded again (the
    same id): the sweeper unlists the entry and keeps the file the new record points at."""
    r = redis_client
    ds = _dataset(r, store, seed=7)
    datasets.delete_dataset(r, store, ds, "acme")
    r.zadd(keys.TRASH, {f"datasets/{ds}.npz": 0})  # as if the deleter died before removing it
    assert _dataset(r, store, seed=7) == ds
    assert trash.empty(r, store) == 1
    assert store.exists(f"datasets/{ds}.npz") and r.zcard(keys.TRASH) == 0
    X, _ = datasets.load_arrays(store, ds)
    assert X.shape == (20, 3)


def test_the_sweeper_drops_a_hosts_cached_copies_of_deleted_datasets(redis_client, store, tmp_path):
    """On an object store each worker host keeps copies of datasets (workers/dataset_cache.py), which the
    API that deletes a dataset cannot reach: the host's sweeper drops those whose record is gone."""
    from dnnq.workers.dataset_cache import DatasetCache

    r = redis_client
    kept, gone = _dataset(r, store, seed=11), _dataset(r, store, seed=12)
    cache = DatasetCache(tmp_path / "cache" / "datasets", 1 << 30)
    for dataset_id in (kept, gone):
        key = f"datasets/{dataset_id}.npz"
        data = store.get(key)
        sha = hashlib.sha256(data).hexdigest()
        cache.open(key, sha, lambda out, data=data: out.write(data)).close()
    datasets.delete_dataset(r, store, gone, "acme")

    assert recovery.forget_deleted_datasets(r, cache) == 1
    assert cache.cached_keys() == [f"datasets/{kept}.npz"]
    assert [p.name for p in cache.root.iterdir() if gone in p.name] == []
    assert recovery.forget_deleted_datasets(r, cache) == 0
    assert recovery.forget_deleted_datasets(r, DatasetCache(tmp_path / "absent", 1)) == 0
