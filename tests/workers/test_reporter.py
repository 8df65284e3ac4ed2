"""workers/reporter.py against a real Redis: EpochReporter's writes (history and progress as fit made
them) and a stacked pack's FlushGroup (every trial's pending epochs in one round trip, each trial's own
cancel and lost lease seen by that trial alone)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import redis

from dnnq.models import EpochRecord, EpochState
from dnnq.workers import datasets, jobs, keys
from dnnq.workers import reporter as reporter_module
from dnnq.workers.reporter import EpochReporter, FlushGroup
from dnnq.workers.settings import WorkerSettings


@pytest.fixture
def settings(redis_url, data_dir):
    return WorkerSettings(redis_url=redis_url, data_dir=data_dir, progress_flush_seconds=0.0)


def running_job(r, store, token: str) -> str:
    ds = datasets.save_dataset(
        r, store, tenant="public", name="d", source="test", X=np.zeros((4, 2)), Y=np.zeros(4), label_kind="binary"
    )
    spec = {"dataset_id": ds["id"], "model": {"hidden_layers": [2]}, "training": {"epochs": 3}}
    job_id = jobs.create_job(r, tenant="public", spec=spec, queue="default", dataset_id=ds["id"])["id"]
    assert jobs.claim(r, job_id, token, 60_000)
    return job_id


def reporter(r, store, settings, job_id, token, group=None) -> EpochReporter:
    return EpochReporter(
        r,
        store,
        settings,
        job_id,
        token,
        resume_epoch=0,
        checkpoint_every=1000,
        lease_lost=threading.Event(),
        release_requested=lambda: False,
        report_gpu=lambda: None,
        group=group,
    )


def state(epoch: int, epochs: int, loss: float) -> EpochState:
    return EpochState(epoch, epochs, EpochRecord(epoch, loss, 0.5), 0.0, lambda: None, "cpu")


def test_a_reporter_writes_each_epoch_as_fit_made_it_and_the_progress_it_ends_on(redis_client, store, settings):
    job_id = running_job(redis_client, store, "t")
    rep = reporter(redis_client, store, settings, job_id, "t")
    for e in range(1, 4):
        rep.on_epoch(state(e, 3, 1.0 / e))
    history = jobs.get_history(redis_client, job_id, store=store)
    assert history == [
        {"epoch": e, "loss": 1.0 / e, "accuracy": 0.5, "val_loss": None, "val_accuracy": None} for e in range(1, 4)
    ]
    job = jobs.get_job(redis_client, job_id)
    assert job["progress"] == {"epoch": 3, "epochs": 3, "loss": pytest.approx(1 / 3)}
    assert job["device"] == "cpu" and rep.last_epoch == 3


def test_a_flush_group_writes_every_trials_epochs_in_one_round_trip(
    redis_client, store, redis_url, data_dir, monkeypatch
):
    clock = {"now": 0.0}  # one second an epoch; a write due every 2 s
    monkeypatch.setattr(reporter_module, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    every_2s = WorkerSettings(redis_url=redis_url, data_dir=data_dir, progress_flush_seconds=2.0)
    tokens = ["a", "b", "c"]
    ids = [running_job(redis_client, store, t) for t in tokens]
    group = FlushGroup(redis_client, every_2s)
    reps = [reporter(redis_client, store, every_2s, i, t, group) for i, t in zip(ids, tokens, strict=True)]
    trips = count_group_trips(monkeypatch)
    alone: list[str] = []
    one = jobs.record_epochs

    def spy(r, j, *a, **k):  # a trial's own round trip; the group's queue on a pipeline (counted by `trips`)
        if not isinstance(r, redis.client.Pipeline):
            alone.append(j)
        return one(r, j, *a, **k)

    monkeypatch.setattr(jobs, "record_epochs", spy)
    epochs = 8
    for e in range(1, epochs + 1):  # as fit_packed calls them: every live trial in order, each epoch
        clock["now"] = float(e)
        for rep in reps:
            rep.on_epoch(state(e, epochs, 1.0 / e))
    # each trial's first and last epoch are its own writes; between them the group's writes, due at
    # epochs 2, 4 and 6 (trial 0's epoch starts them), carry every trial's pending epochs together
    assert alone == ids + ids
    assert trips == [[ids[0]], ids, ids]
    for job_id in ids:
        assert [h["epoch"] for h in jobs.get_history(redis_client, job_id, store=store)] == list(range(1, epochs + 1))
        assert jobs.get_job(redis_client, job_id)["progress"] == {"epoch": 8, "epochs": 8, "loss": 0.125}


def test_a_cancel_or_a_lost_lease_in_a_flush_group_stops_that_trial_alone(redis_client, store, settings, monkeypatch):
    tokens = ["a", "b", "c"]
    ids = [running_job(redis_client, store, t) for t in tokens]
    group = FlushGroup(redis_client, settings)  # progress_flush_seconds=0: a group write every epoch
    reps = [reporter(redis_client, store, settings, i, t, group) for i, t in zip(ids, tokens, strict=True)]
    trips = count_group_trips(monkeypatch)
    epochs = 6
    for e in range(1, epochs + 1):
        if e == 3:
            assert jobs.request_cancel(redis_client, ids[1]) == "cancelling"
            redis_client.set(keys.job_lease(ids[2]), "someone-else")  # trial 2's lease taken meanwhile
        for rep in reps:
            rep.on_epoch(state(e, epochs, 1.0 / e))
    assert [rep.cancelled for rep in reps] == [False, True, False]
    assert [rep.lease_is_lost for rep in reps] == [False, False, True]
    assert [rep.should_stop() for rep in reps] == [False, True, True]
    # trial 2 took part in the group's writes of epochs 2 and 3 (the second found the lease gone), no more
    assert sum(ids[2] in trip for trip in trips) == 2
    assert [h["epoch"] for h in jobs.get_history(redis_client, ids[0], store=store)] == list(range(1, epochs + 1))
    assert [h["epoch"] for h in jobs.get_history(redis_client, ids[1], store=store)] == list(range(1, epochs + 1))
    assert [h["epoch"] for h in jobs.get_history(redis_client, ids[2], store=store)] == [1, 2]


def count_group_trips(monkeypatch) -> list[list[str]]:
    """The job ids of each jobs.record_epochs_many round trip from now on."""
    trips: list[list[str]] = []
    many = jobs.record_epochs_many
    monkeypatch.setattr(jobs, "record_epochs_many", lambda r, w: (trips.append([x[0] for x in w]), many(r, w))[1])
    return trips


def test_flush_remaining_writes_what_fit_left_pending(redis_client, store, redis_url, data_dir):
    slow = WorkerSettings(redis_url=redis_url, data_dir=data_dir, progress_flush_seconds=3600)
    job_id = running_job(redis_client, store, "t")
    rep = reporter(redis_client, store, slow, job_id, "t", FlushGroup(redis_client, slow))
    for e in range(1, 5):  # fit raised after epoch 4 of 10: epochs 2-4 still pending
        rep.on_epoch(state(e, 10, 1.0 / e))
    assert len(jobs.get_history(redis_client, job_id, store=store)) == 1
    rep.flush_remaining()
    assert [h["epoch"] for h in jobs.get_history(redis_client, job_id, store=store)] == [1, 2, 3, 4]
    assert jobs.get_job(redis_client, job_id)["progress"] == {"epoch": 4, "epochs": 10, "loss": 0.25}


def test_a_flush_group_checkpoints_its_trials_by_time_at_one_epoch(
    redis_client, store, redis_url, data_dir, monkeypatch
):
    """By time, each trial's own clock would cross DNNQ_CHECKPOINT_SECONDS between two trials' calls of one
    epoch, checkpointing them at different epochs, and a stack resumes only trials checkpointed at one
    epoch: the group decides once an epoch for all."""
    clock, saved = {"now": 0.0, "epoch": 0}, []
    monkeypatch.setattr(reporter_module, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    monkeypatch.setattr(
        reporter_module.artifacts, "save_checkpoint", lambda s, job_id, c: saved.append((job_id, clock["epoch"]))
    )
    every_1s = WorkerSettings(redis_url=redis_url, data_dir=data_dir, progress_flush_seconds=60, checkpoint_seconds=1)
    ids = [running_job(redis_client, store, t) for t in "abc"]
    group = FlushGroup(redis_client, every_1s)
    reps = [
        EpochReporter(
            redis_client, store, every_1s, job_id, token, resume_epoch=0, checkpoint_every=None,
            lease_lost=threading.Event(), release_requested=lambda: False, report_gpu=lambda: None, group=group,
        )
        for job_id, token in zip(ids, "abc", strict=True)
    ]  # fmt: skip
    for e in range(1, 7):
        clock["epoch"] = e
        for k, rep in enumerate(reps):
            clock["now"] = 0.45 * e + 0.2 * k  # epoch 2: trial 0 at 0.9 s, trials 1 and 2 at 1.1 and 1.3 s
            rep.on_epoch(state(e, 10, 1.0 / e))
    by_epoch = {e: sorted(j for j, at in saved if at == e) for e in {at for _, at in saved}}
    assert by_epoch == {3: sorted(ids), 6: sorted(ids)}
