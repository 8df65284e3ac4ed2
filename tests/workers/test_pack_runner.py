"""workers/pack_runner.py in-process against a real Redis: a sweep's pack claimed and trained by one
trial's message, each trial equal to its solo run, cancel and divergence ending one trial alone, the
memory check, and non-sweep jobs left to runner.run_job."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

from dnnq.workers import datasets, jobs, keys, shutdown, sweeps
from dnnq.workers.pack_runner import pack_memory_bytes, run_pack, run_trial
from dnnq.workers.settings import WorkerSettings
from dnnq.workers.spec import JobSpec


@pytest.fixture
def settings(redis_url, data_dir):
    # a 10 s lease: a process's first fit imports Numba holding the GIL for seconds on a busy machine
    return WorkerSettings(
        redis_url=redis_url, data_dir=data_dir, lease_seconds=10, heartbeat_seconds=0.2, worker_name="packer"
    )


def dataset(r, store, kind="binary", m=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 3))
    Y = {"binary": (X[:, 0] > 0).astype(float), "continuous": X @ np.array([1.0, -2.0, 0.5]) * 1e6}[kind]
    return datasets.save_dataset(
        r, store, tenant="public", name=f"{kind}-set", source="test", X=X, Y=Y, label_kind=kind
    )


def make_sweep(r, base: dict, trials: list[dict]) -> list[str]:
    overrides = sweeps.expand(None, trials, 64)
    specs = sweeps.trial_specs(base, overrides)
    sweep = sweeps.create_sweep(
        r, tenant="public", base=base, trials=[sweeps.Trial(o, s) for o, s in zip(overrides, specs, strict=True)]
    )
    return sweep["job_ids"]


def solo_job(r, spec: dict) -> str:
    spec = JobSpec.model_validate(spec).model_dump(mode="json")
    return jobs.create_job(r, tenant="public", spec=spec, queue="default", dataset_id=spec["dataset_id"])["id"]


def weights_of(store, job_id):
    with np.load(io.BytesIO(store.get(f"jobs/{job_id}/weights.npz")), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def base_spec(ds, **training):
    return {
        "dataset_id": ds["id"],
        "model": {"hidden_layers": [6, 4]},
        "training": {"epochs": 40, "optimizer": "momentum", "batch_size": 32, "dtype": "float64", **training},
        "device": "cpu",
    }


def test_four_trials_train_as_one_pack_each_equal_to_its_solo_run(redis_client, store, settings):
    ds = dataset(redis_client, store)
    base = base_spec(ds, seed=3)
    trials = [{"lr": lr, "l2": l2} for lr, l2 in ((0.05, 0.0), (0.1, 0.01), (0.02, 0.1), (0.2, 0.0))]
    ids = make_sweep(redis_client, base, trials)

    outcomes = run_pack(ids[1], settings=settings, r=redis_client, store=store)  # any trial's message
    assert outcomes == dict.fromkeys([ids[1], ids[0], ids[2], ids[3]], "succeeded")
    assert list(outcomes) == [ids[1], ids[0], ids[2], ids[3]]  # its own trial first, then trial order
    for other in ids:  # each sibling's own message later finds its job taken and does nothing
        assert run_trial(other, settings=settings, r=redis_client, store=store) is None

    for job_id, trial in zip(ids, trials, strict=True):
        job = jobs.get_job(redis_client, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert job["timings"]["pack_size"] == 4 and job["timings"]["pack_wait_s"] >= 0
        spec = {**base, "training": {**base["training"], "learning_rate": trial["lr"], "l2": trial["l2"]}}
        solo = solo_job(redis_client, spec)
        assert run_trial(solo, settings=settings, r=redis_client, store=store) == "succeeded"  # not a sweep: run_job
        solo_job_rec = jobs.get_job(redis_client, solo)
        assert "pack_size" not in solo_job_rec["timings"]
        packed_h, solo_h = (
            jobs.get_history(redis_client, job_id, store=store),
            jobs.get_history(redis_client, solo, store=store),
        )
        assert len(packed_h) == len(solo_h) == 40
        for a, b in zip(packed_h, solo_h, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=0)
        packed_w, solo_w = weights_of(store, job_id), weights_of(store, solo)
        assert packed_w.keys() == solo_w.keys()
        for name in packed_w:
            np.testing.assert_allclose(packed_w[name], solo_w[name], rtol=1e-12, atol=0)
        assert job["metrics"] == solo_job_rec["metrics"]


def test_a_diverging_trial_fails_alone_and_the_pack_goes_on(redis_client, store, settings):
    ds = dataset(redis_client, store, kind="continuous")
    base = {
        "dataset_id": ds["id"],
        "model": {"hidden_layers": [4], "output": "linear"},
        "training": {"epochs": 30, "optimizer": "gd", "learning_rate": 1e-3},
    }
    ids = make_sweep(redis_client, base, [{"lr": 1e-14}, {"lr": 10.0}, {"lr": 2e-14}])
    outcomes = run_pack(ids[0], settings=settings, r=redis_client, store=store)
    assert outcomes == {ids[0]: "succeeded", ids[1]: "failed", ids[2]: "succeeded"}
    failed = jobs.get_job(redis_client, ids[1])
    assert "epoch" in failed["error"].lower() and "Traceback" not in failed["error"]
    assert not store.exists(f"jobs/{ids[1]}/weights.npz")
    assert store.exists(f"jobs/{ids[2]}/weights.npz")


def test_cancelling_one_trial_mid_pack_leaves_the_others_to_finish(redis_client, store, settings):
    ds = dataset(redis_client, store)
    base = base_spec(ds, epochs=30)
    # trial 1 is long enough that it is certainly cancelled while it trains; trial 2 while it waits
    ids = make_sweep(redis_client, base, [{"lr": 0.05}, {"lr": 0.1, "epochs": 100_000}, {"lr": 0.2}, {"lr": 0.3}])
    outcomes: dict = {}
    runner = threading.Thread(
        target=lambda: outcomes.update(run_pack(ids[0], settings=settings, r=redis_client, store=store))
    )
    runner.start()
    deadline = time.monotonic() + 60
    while not jobs.get_history(redis_client, ids[1], store=store):  # trial 1 has started training
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.01)
    assert jobs.get_job(redis_client, ids[2])["status"] == "running"  # claimed by the pack, waiting
    assert jobs.request_cancel(redis_client, ids[1]) == "cancelling"
    assert jobs.request_cancel(redis_client, ids[2]) == "cancelling"
    runner.join(60)
    assert not runner.is_alive()
    assert outcomes == {ids[0]: "succeeded", ids[1]: "cancelled", ids[2]: "cancelled", ids[3]: "succeeded"}
    trained = len(jobs.get_history(redis_client, ids[1], store=store))
    assert 1 <= trained < 100_000
    assert jobs.get_history(redis_client, ids[2], store=store) == []  # cancelled before its turn: never trained
    assert len(jobs.get_history(redis_client, ids[3], store=store)) == 30


def test_a_shutdown_mid_pack_releases_the_trial_training_and_those_waiting(redis_client, store, settings):
    ds = dataset(redis_client, store)
    ids = make_sweep(
        redis_client, base_spec(ds, epochs=20), [{"lr": 0.05}, {"lr": 0.1, "epochs": 100_000}, {"lr": 0.2}]
    )
    outcomes: dict = {}
    runner = threading.Thread(
        target=lambda: outcomes.update(run_pack(ids[0], settings=settings, r=redis_client, store=store))
    )
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not jobs.get_history(redis_client, ids[1], store=store):
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.01)
        shutdown.request_release()  # what SIGTERM does in a training process
        runner.join(60)
    finally:
        shutdown.clear_release_request()
    assert outcomes == {ids[0]: "succeeded", ids[1]: "queued", ids[2]: "queued"}
    records = [jobs.get_job(redis_client, i) for i in ids]
    assert [j["status"] for j in records] == ["succeeded", "queued", "queued"]
    assert store.exists(f"jobs/{ids[1]}/checkpoint.npz")  # trial 1 resumes from where it stopped
    # released, the attempt kept: the next worker's claim does not count a new one (trial 1, far too
    # long to finish here, is cancelled while queued)
    assert jobs.request_cancel(redis_client, ids[1]) == "cancelled"
    assert run_pack(ids[2], settings=settings, r=redis_client, store=store) == {ids[2]: "succeeded"}
    assert jobs.get_job(redis_client, ids[2])["attempts"] == 1


def test_siblings_over_the_workers_memory_stay_queued(redis_client, store, redis_url, data_dir):
    ds = dataset(redis_client, store)
    ids = make_sweep(redis_client, base_spec(ds, epochs=3), [{"lr": 0.1}, {"lr": 0.2}, {"hidden_layers": [6, 4]}])
    # a budget no pack fits: the trial whose message came trains (the API admitted it), alone
    tight = WorkerSettings(
        redis_url=redis_url, data_dir=data_dir, lease_seconds=10, heartbeat_seconds=0.2, worker_memory_bytes=1
    )
    assert run_pack(ids[0], settings=tight, r=redis_client, store=store) == {ids[0]: "succeeded"}
    assert [jobs.get_job(redis_client, i)["status"] for i in ids[1:]] == ["queued", "queued"]
    # with room, the next message takes the rest as a pack
    roomy = WorkerSettings(redis_url=redis_url, data_dir=data_dir, lease_seconds=10, heartbeat_seconds=0.2)
    assert run_pack(ids[2], settings=roomy, r=redis_client, store=store) == {ids[2]: "succeeded", ids[1]: "succeeded"}


def test_pack_memory_counts_the_data_once():
    assert pack_memory_bytes([100, 120, 110], 80) == 80 + 40
    assert pack_memory_bytes([100, 120, 110], 80, stacked=True) == 80 + 20 + 40 + 30
    assert pack_memory_bytes([], 80) == 80


@pytest.mark.parametrize("stacked", [True, False])
def test_a_wide_pack_computes_the_data_gram_matrix_once_each_trial_equal_to_its_solo_run(
    redis_client, store, settings, monkeypatch, stacked
):
    """On the Gram path the pack's trials share X X^T: stacked (models.packed.fit_packed(path="gram"),
    fresh trials) or one after another (models.gram.SharedGram: the first trial's fit makes it), and
    every trial's history, weights and metrics still equal its solo job's."""
    from dnnq.models import gram
    from dnnq.workers import pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", stacked)

    made: list[str] = []
    block = gram.SharedGram.block

    def counting(self, xp, name, hosts, make):
        return block(self, xp, name, hosts, lambda: (made.append(name), make())[1])

    monkeypatch.setattr(gram.SharedGram, "block", counting)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 300))  # 300 features, 40 examples: fit(path="auto") takes the Gram path
    ds = datasets.save_dataset(
        redis_client, store, tenant="public", name="wide", source="test", X=X, Y=(X[:, 0] > 0).astype(float),
        label_kind="binary",
    )  # fmt: skip
    base = wide_gd_spec(ds, epochs=30)
    trials = [{"lr": lr, "seed": seed} for lr, seed in ((0.05, 1), (0.1, 2), (0.02, 3))]
    ids = make_sweep(redis_client, base, trials)
    assert run_pack(ids[0], settings=settings, r=redis_client, store=store) == dict.fromkeys(ids, "succeeded")
    assert made == ([] if stacked else ["XX"])  # sequential: the first trial's fit made it, the others reused it
    for job_id, trial in zip(ids, trials, strict=True):
        assert jobs.get_job(redis_client, job_id)["timings"].get("pack_stacked") == (1.0 if stacked else None)
        spec = {**base, "training": {**base["training"], "learning_rate": trial["lr"], "seed": trial["seed"]}}
        solo = solo_job(redis_client, spec)
        assert run_trial(solo, settings=settings, r=redis_client, store=store) == "succeeded"
        packed_h, solo_h = (
            jobs.get_history(redis_client, job_id, store=store),
            jobs.get_history(redis_client, solo, store=store),
        )
        assert len(packed_h) == len(solo_h) == 30
        for a, b in zip(packed_h, solo_h, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=0)
        packed_w, solo_w = weights_of(store, job_id), weights_of(store, solo)
        for name in packed_w:
            np.testing.assert_allclose(packed_w[name], solo_w[name], rtol=1e-12, atol=0)
        got, want = jobs.get_job(redis_client, job_id)["metrics"], jobs.get_job(redis_client, solo)["metrics"]
        assert got["final_loss"] == pytest.approx(want["final_loss"], rel=1e-12, abs=0)  # stacked: to rounding
        assert {k: v for k, v in got.items() if k != "final_loss"} == {
            k: v for k, v in want.items() if k != "final_loss"
        }
    assert made == ([] if stacked else ["XX"])  # a solo job (runner.run_job) has no cache: its fit computes its own


def test_a_float32_pack_trains_one_trial_after_another_each_bit_for_bit_its_solo_job(
    redis_client, store, settings, monkeypatch
):
    """Stacking reorders roundings, which float32 grows past 1e-5 over long runs: a float32 pack that could
    stack (wide data, gd) trains its trials one after another instead, each exactly its solo job."""
    from dnnq.workers import pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", True)
    ds, _ = wide_datasets(redis_client, store)
    base = wide_gd_spec(ds, epochs=20, dtype="float32")
    ids = make_sweep(redis_client, base, [{"lr": 0.1}, {"lr": 0.2}])
    assert run_pack(ids[0], settings=settings, r=redis_client, store=store) == dict.fromkeys(ids, "succeeded")
    for job_id, lr in zip(ids, (0.1, 0.2), strict=True):
        timings = jobs.get_job(redis_client, job_id)["timings"]
        assert timings["pack_size"] == 2.0 and "pack_stacked" not in timings
        solo = solo_job(redis_client, {**base, "training": {**base["training"], "learning_rate": lr}})
        assert run_trial(solo, settings=settings, r=redis_client, store=store) == "succeeded"
        assert [e["loss"] for e in jobs.get_history(redis_client, job_id, store=store)] == [
            e["loss"] for e in jobs.get_history(redis_client, solo, store=store)
        ]
        packed_w, solo_w = weights_of(store, job_id), weights_of(store, solo)
        assert all(np.array_equal(packed_w[k], solo_w[k]) for k in solo_w)


def test_a_stacked_pack_fails_a_diverging_trial_alone_and_drops_a_cancelled_one(
    redis_client, store, settings, monkeypatch
):
    """The stacked Gram-path pack keeps each trial's own end: one diverges (failed, no weights), one is
    cancelled mid-training (leaves the stack), the third trains to its last epoch."""
    from dnnq.workers import pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", True)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 300))
    ds = datasets.save_dataset(
        redis_client, store, tenant="public", name="wide-cont", source="test", X=X, Y=X[:, 0] * 1e6,
        label_kind="continuous",
    )  # fmt: skip
    base = {
        "dataset_id": ds["id"],
        "model": {"hidden_layers": [5, 3], "output": "linear"},
        "training": {"epochs": 200, "optimizer": "gd", "learning_rate": 1e-12, "dtype": "float64", "seed": 1},
        "device": "cpu",
    }
    ids = make_sweep(redis_client, base, [{"lr": 1e-12}, {"lr": 10.0}, {"lr": 2e-12, "epochs": 1_000_000}])
    outcomes: dict = {}
    runner = threading.Thread(
        target=lambda: outcomes.update(run_pack(ids[0], settings=settings, r=redis_client, store=store))
    )
    runner.start()
    deadline = time.monotonic() + 60
    while not jobs.get_history(redis_client, ids[2], store=store):  # the stack has started training
        assert time.monotonic() < deadline, "the pack never started"
        time.sleep(0.01)
    assert jobs.request_cancel(redis_client, ids[2]) == "cancelling"
    runner.join(60)
    assert not runner.is_alive()
    assert outcomes == {ids[0]: "succeeded", ids[1]: "failed", ids[2]: "cancelled"}
    done = jobs.get_job(redis_client, ids[0])
    assert done["timings"]["pack_stacked"] == 1.0 and done["timings"]["pack_size"] == 3
    assert len(jobs.get_history(redis_client, ids[0], store=store)) == 200
    failed = jobs.get_job(redis_client, ids[1])
    assert "epoch" in failed["error"].lower() and "Traceback" not in failed["error"]
    assert not store.exists(f"jobs/{ids[1]}/weights.npz")
    assert 1 <= len(jobs.get_history(redis_client, ids[2], store=store)) < 1_000_000


def wide_datasets(r, store, seed=4):
    """40 training and 30 validation examples of 300 features: fit(path="auto") takes the Gram path."""
    rng = np.random.default_rng(seed)
    X, X_val = rng.normal(size=(40, 300)), rng.normal(size=(30, 300))
    label = lambda A: (A[:, 0] + 0.5 * A[:, 1] > 0).astype(float)  # noqa: E731
    ds = datasets.save_dataset(r, store, tenant="public", name="w", source="t", X=X, Y=label(X), label_kind="binary")
    val = datasets.save_dataset(
        r, store, tenant="public", name="wv", source="t", X=X_val, Y=label(X_val), label_kind="binary"
    )
    return ds, val


def wide_gd_spec(ds: dict, *, epochs: int, dtype: str = "float64", **training) -> dict:
    """A gd job spec on ``ds`` (wide data: fit's Gram path, so a pack of them may stack), seed 1, two hidden layers."""
    return {
        "dataset_id": ds["id"],
        "model": {"hidden_layers": [5, 3]},
        "training": {"epochs": epochs, "optimizer": "gd", "dtype": dtype, "seed": 1, **training},
        "device": "cpu",
    }


def test_a_stacked_pack_scores_all_its_trials_from_one_read_of_each_dataset(redis_client, store, settings, monkeypatch):
    """The pack's train and validation accuracies come from one read of each dataset for all its trials
    (besides the read for training), and equal what each trial's solo job records."""
    from dnnq.workers import inputs, pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", True)
    ds, val = wide_datasets(redis_client, store)
    base = {**wide_gd_spec(ds, epochs=25), "validation_dataset_id": val["id"], "preprocess": {"scale": 0.5}}
    trials = [{"lr": lr, "seed": seed} for lr, seed in ((0.05, 1), (0.2, 2), (0.5, 3), (1.0, 4))]
    ids = make_sweep(redis_client, base, trials)
    reads: list[tuple[str, str]] = []
    for how in ("load_arrays", "map_arrays"):  # to train; to score (mapped: workers/datasets.py)
        read = getattr(inputs, how)
        monkeypatch.setattr(inputs, how, lambda s, i, sha=None, h=how, f=read: (reads.append((h, i)), f(s, i, sha))[1])
    assert run_pack(ids[0], settings=settings, r=redis_client, store=store) == dict.fromkeys(ids, "succeeded")
    want_reads = [(how, d) for how in ("load_arrays", "map_arrays") for d in (ds["id"], val["id"])]
    assert sorted(reads) == sorted(want_reads)  # one read to train, one to score, each
    seen = set()
    for job_id, trial in zip(ids, trials, strict=True):
        got = jobs.get_job(redis_client, job_id)
        assert got["timings"]["pack_stacked"] == 1.0
        spec = {**base, "training": {**base["training"], "learning_rate": trial["lr"], "seed": trial["seed"]}}
        solo = solo_job(redis_client, spec)
        assert run_trial(solo, settings=settings, r=redis_client, store=store) == "succeeded"
        want = jobs.get_job(redis_client, solo)["metrics"]
        for name in ("train_accuracy", "validation_accuracy"):
            assert got["metrics"][name] == want[name]
            assert 0.0 <= got["metrics"][name] <= 1.0
            seen.add((name, got["metrics"][name]))
        model = json.loads(store.get(f"jobs/{job_id}/model.json"))
        assert model["metrics"] == got["metrics"]
    assert len(seen) > 2  # the trials' accuracies differ: each trial is scored with its own weights


def three_wide_gd_trials(redis_client, store) -> list[str]:
    """A sweep of three learning rates on wide data (the Gram path: packs that may stack), its job ids."""
    ds, _ = wide_datasets(redis_client, store)
    base = wide_gd_spec(ds, epochs=30)
    return make_sweep(redis_client, base, [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}])


def test_a_stacked_trial_whose_end_fails_fails_alone(redis_client, store, settings, monkeypatch):
    """A trial whose weights cannot be written ends 'failed' with the reason; the pack's other trials
    end as they would have."""
    from dnnq.workers import artifacts, pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", True)
    ids = three_wide_gd_trials(redis_client, store)
    save_trained = artifacts.save_trained

    def full_disk(store_, job_id, params, info):
        if job_id == ids[1]:
            raise OSError(28, "No space left on device")
        return save_trained(store_, job_id, params, info)

    monkeypatch.setattr(artifacts, "save_trained", full_disk)
    outcomes = run_pack(ids[0], settings=settings, r=redis_client, store=store)
    assert outcomes == {ids[0]: "succeeded", ids[1]: "failed", ids[2]: "succeeded"}
    failed = jobs.get_job(redis_client, ids[1])
    assert failed["status"] == "failed" and "No space left on device" in failed["error"]
    done = jobs.get_job(redis_client, ids[2])
    assert done["timings"]["pack_stacked"] == 1.0 and done["metrics"]["train_accuracy"] is not None


@pytest.mark.parametrize("stacked", [True, False])
def test_a_pack_that_may_stack_claims_siblings_by_their_summed_memory(
    redis_client, store, redis_url, data_dir, monkeypatch, stacked
):
    """A stacked pack holds every trial's memory at once: with STACK_PACKS on, the siblings it claims fit
    pack_memory_bytes(stacked=True); trained one after another, the largest trial's."""
    from dnnq.workers import pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", stacked)
    ids = three_wide_gd_trials(redis_client, store)
    job = jobs.get_job(redis_client, ids[0])
    n, data = pack_runner._data_bytes(redis_client, job)
    est = pack_runner._estimate(pack_runner._config(redis_client, job), n)
    capacity = pack_memory_bytes([est] * 2, data, stacked=True)  # two trials stacked fit, three do not
    assert pack_memory_bytes([est] * 3, data, stacked=True) > capacity >= pack_memory_bytes([est] * 3, data)
    tight = WorkerSettings(
        redis_url=redis_url, data_dir=data_dir, lease_seconds=10, heartbeat_seconds=0.2, worker_memory_bytes=capacity
    )
    outcomes = run_pack(ids[0], settings=tight, r=redis_client, store=store)
    if stacked:
        assert outcomes == {ids[0]: "succeeded", ids[1]: "succeeded"}
        assert jobs.get_job(redis_client, ids[2])["status"] == "queued"
        assert jobs.get_job(redis_client, ids[0])["timings"]["pack_stacked"] == 1.0
    else:
        assert outcomes == dict.fromkeys(ids, "succeeded")


@pytest.mark.parametrize("killed_at", [10, 20])
def test_a_stacked_pack_killed_mid_training_resumes_each_trial_to_its_solo_weights(
    redis_client, store, settings, monkeypatch, killed_at
):
    """The process dies mid-stack (as kill -9 leaves it: leases unrenewed, checkpoints on disk); once the
    leases expire and the trials are requeued, the next message's pack resumes every trial from its own
    checkpoint, each to its solo job's history and weights: stacked again (all at one epoch, gd) where
    each resumed solo fit would take the Gram path (20 epochs left), else one after another (10 left:
    fit's plan finds the Gram path's setup not worth it, and so does _stackable)."""
    from dnnq.workers import artifacts, keys, pack_runner

    monkeypatch.setattr(pack_runner, "STACK_PACKS", True)
    ds, _ = wide_datasets(redis_client, store)
    base = wide_gd_spec(ds, epochs=30, checkpoint_every=10)
    trials = [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}]
    ids = make_sweep(redis_client, base, trials)
    save_checkpoint = artifacts.save_checkpoint

    def dies_after_a_checkpoint(store_, job_id, ckpt):
        digest = save_checkpoint(store_, job_id, ckpt)
        if job_id == ids[-1] and ckpt.epoch == killed_at:
            raise SystemExit("killed")  # every trial has its checkpoint of that epoch
        return digest

    monkeypatch.setattr(artifacts, "save_checkpoint", dies_after_a_checkpoint)
    with pytest.raises(SystemExit):
        run_pack(ids[0], settings=settings, r=redis_client, store=store)
    monkeypatch.setattr(artifacts, "save_checkpoint", save_checkpoint)
    assert [jobs.get_job(redis_client, i)["status"] for i in ids] == ["running"] * 3
    for job_id in ids:
        redis_client.delete(keys.job_lease(job_id))  # as when the dead worker's leases expire
    assert sorted(jobs.requeue_expired(redis_client)) == sorted(ids)

    assert run_pack(ids[1], settings=settings, r=redis_client, store=store) == dict.fromkeys(ids, "succeeded")
    for job_id, trial in zip(ids, trials, strict=True):
        job = jobs.get_job(redis_client, job_id)
        assert job["attempts"] == 2 and job["resumed_from_epoch"] == killed_at
        assert job["timings"].get("pack_stacked") == (1.0 if killed_at == 10 else None)
        spec = {**base, "training": {**base["training"], "learning_rate": trial["lr"]}}
        solo = solo_job(redis_client, spec)
        assert run_trial(solo, settings=settings, r=redis_client, store=store) == "succeeded"
        history = jobs.get_history(redis_client, job_id, store=store)
        solo_history = jobs.get_history(redis_client, solo, store=store)
        assert [h["epoch"] for h in history] == [h["epoch"] for h in solo_history] == list(range(1, 31))
        assert [h["accuracy"] for h in history] == [h["accuracy"] for h in solo_history]
        np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in solo_history], rtol=1e-12, atol=0)
        packed_w, solo_w = weights_of(store, job_id), weights_of(store, solo)
        for name in packed_w:
            np.testing.assert_allclose(packed_w[name], solo_w[name], rtol=1e-12, atol=0)


def test_a_pack_counts_once_against_its_tenants_worker_cap(redis_client, store, redis_url, data_dir):
    settings = WorkerSettings(
        redis_url=redis_url,
        data_dir=data_dir,
        lease_seconds=10,
        heartbeat_seconds=0.2,
        worker_name="packer",
        max_workers_per_tenant=1,
    )
    ds = dataset(redis_client, store)
    ids = make_sweep(redis_client, base_spec(ds, seed=3, epochs=10), [{"lr": lr} for lr in (0.05, 0.1, 0.2)])
    busy = keys.tenant_busy("public")
    redis_client.zadd(busy, {"elsewhere:1": time.time() * 1000 + 60_000})  # another process trains one of its jobs
    assert run_pack(ids[0], settings=settings, r=redis_client, store=store) == {}
    assert jobs.get_job(redis_client, ids[0])["status"] == "queued"
    assert redis_client.zscore(keys.DEFERRED, ids[0]) is not None

    redis_client.zrem(busy, "elsewhere:1")
    seen: list[list[str]] = []
    watching = threading.Event()

    def watch():
        while not watching.wait(0.05):
            seen.append(redis_client.zrange(busy, 0, -1))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcomes = run_pack(ids[0], settings=settings, r=redis_client, store=store)
    finally:
        watching.set()
        watcher.join()
    assert outcomes == dict.fromkeys(ids, "succeeded")  # the siblings joined the pack: one process, one share
    assert seen and all(len(members) == 1 and members[0].startswith("packer:") for members in seen if members)
    assert redis_client.zcard(busy) == 0  # left when the pack ended
