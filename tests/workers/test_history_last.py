"""A moved history's last entry stays in its job's record (`history_last`), whoever moves it: the
worker's finish or the sweeper's move_history; a sweep's trial reads rank by it and read no file.
Records moved before the field existed get their last entry from the file's last line."""

from __future__ import annotations

import json

import pytest

from dnnq.workers import history_store, jobs, keys, sweeps
from dnnq.workers.history_store import HISTORY_INLINE_MAX
from dnnq.workers.spec import JobSpec

BASE = JobSpec(dataset_id="ab" * 12).model_dump(mode="json")
LONG = HISTORY_INLINE_MAX + 5


def one_trial_sweep(r) -> dict:
    overrides = sweeps.expand(None, [{}], 64)
    trial = sweeps.Trial(overrides[0], sweeps.trial_specs(BASE, overrides)[0])
    return sweeps.create_sweep(r, tenant="t", base=BASE, trials=[trial])


def trained(r, job_id: str, n_epochs: int) -> list[dict]:
    entries = [{"epoch": e, "loss": 1.0 / e, "accuracy": e / (n_epochs + 1)} for e in range(1, n_epochs + 1)]
    assert jobs.claim(r, job_id, "w", 60_000)
    jobs.record_epochs(r, job_id, "w", entries, {"epoch": n_epochs, "epochs": n_epochs, "loss": entries[-1]["loss"]})
    return entries


def test_the_sweepers_move_keeps_the_last_entry_as_redis_held_it(redis_client, store):
    r = redis_client
    sweep = one_trial_sweep(r)
    job_id = sweep["job_ids"][0]
    trained(r, job_id, LONG)
    last_raw = r.lindex(keys.job_history(job_id), -1)
    assert jobs.finish(r, job_id, "w", "succeeded")  # no store: the sweeper moves it
    assert r.hget(keys.job(job_id), "history_last") is None

    assert jobs.move_history(r, store, job_id) == "moved"
    assert not r.exists(keys.job_history(job_id))
    assert r.hget(keys.job(job_id), "history_last") == last_raw

    (record,) = sweeps.trial_jobs(r, sweep)
    assert record["last_epoch"] == json.loads(last_raw)
    assert "history_last" not in record  # read into last_epoch, not left as a raw string


def test_a_short_history_keeps_no_copy(redis_client, store):
    r = redis_client
    sweep = one_trial_sweep(r)
    job_id = sweep["job_ids"][0]
    entries = trained(r, job_id, 3)
    assert jobs.finish(r, job_id, "w", "succeeded", store=store)
    assert r.hget(keys.job(job_id), "history_last") is None and r.llen(keys.job_history(job_id)) == 3
    assert sweeps.trial_jobs(r, sweep)[0]["last_epoch"] == entries[-1]


def test_an_older_moved_record_reads_only_the_files_last_line(redis_client, store, monkeypatch):
    r = redis_client
    sweep = one_trial_sweep(r)
    job_id = sweep["job_ids"][0]
    entries = trained(r, job_id, LONG)
    assert jobs.finish(r, job_id, "w", "succeeded", store=store)
    r.hdel(keys.job(job_id), "history_last")  # as records were moved before the field
    history_store.forget(job_id)

    assert sweeps.trial_jobs(r, sweep)[0]["last_epoch"] is None  # without the store: unranked, no read
    monkeypatch.setattr(history_store, "read_history", pytest.fail)  # never the whole file parsed
    assert sweeps.trial_jobs(r, sweep, store=store)[0]["last_epoch"] == entries[-1]
    assert history_store.last_entry(store, job_id) == entries[-1]

    store.delete_prefix(f"jobs/{job_id}/")  # the file gone: remembered, or else unranked (no error)
    history_store.forget(job_id)
    assert sweeps.trial_jobs(r, sweep, store=store)[0]["last_epoch"] is None
