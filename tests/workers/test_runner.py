"""run_job in-process against a real Redis: outcomes, fencing, readable failures."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

from dnnq.models import predict
from dnnq.workers import artifacts, datasets, jobs, keys
from dnnq.workers.runner import run_job
from dnnq.workers.settings import WorkerSettings
from dnnq.workers.spec import JobSpec


@pytest.fixture(scope="module", autouse=True)
def warmed_up():
    # As a worker's pool child does before its first job (workers/__main__.py): a fresh process's first fit
    # compiles the engine's kernels holding the GIL for seconds, longer than these tests' 2 s lease.
    from dnnq.models.warmup import warm_up

    warm_up()


@pytest.fixture
def settings(redis_url, data_dir):
    return WorkerSettings(
        redis_url=redis_url, data_dir=data_dir, lease_seconds=2, heartbeat_seconds=0.2, worker_name="inproc"
    )


def dataset(r, store, kind="binary", m=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 3))
    Y = {
        "binary": (X[:, 0] > 0).astype(float),
        "integer": (X[:, 0] > 0).astype(int) + (X[:, 1] > 0),
        "continuous": X @ np.array([1.0, -2.0, 0.5]) * 1e6,
    }[kind]
    return datasets.save_dataset(
        r, store, tenant="public", name=f"{kind}-set", source="test", X=X, Y=Y, label_kind=kind
    )


def job_for(r, ds, **spec):
    spec = JobSpec.model_validate({"dataset_id": ds["id"], **spec})
    return jobs.create_job(
        r,
        tenant="public",
        spec=spec.model_dump(),
        queue="default",
        dataset_id=ds["id"],
        validation_dataset_id=spec.validation_dataset_id,
    )["id"]


def test_success_with_validation_set(redis_client, store, settings):
    train = dataset(redis_client, store)
    val = dataset(redis_client, store, seed=1, m=40)
    job_id = job_for(
        redis_client, train, validation_dataset_id=val["id"], model={"hidden_layers": [6]}, training={"epochs": 15}
    )
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "succeeded"
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "succeeded"
    assert 0 <= job["metrics"]["validation_accuracy"] <= 1
    weights = weights_of(store, job_id)
    for ds, metric in ((train, "train_accuracy"), (val, "validation_accuracy")):
        X, Y = datasets.load_arrays(store, ds["id"])
        labels = predict(weights, X.T, hidden_activation="relu", output="sigmoid")
        assert job["metrics"][metric] == pytest.approx(float(np.mean(labels == Y[:, 0])), abs=1e-12)
    assert set(job["artifacts"]) >= {"npz", "safetensors", "model_json"}
    model = json.loads(store.get(f"jobs/{job_id}/model.json"))
    assert model["layer_sizes"] == [3, 6, 1] and model["activations"] == ["relu", "sigmoid"]
    assert model["metrics"] == job["metrics"]
    assert not store.exists(f"jobs/{job_id}/checkpoint.npz")  # removed once the weights are written
    assert float(redis_client.hget(keys.STATS, "training_seconds_total")) > 0


def weights_of(store, job_id):
    import io

    with np.load(io.BytesIO(store.get(f"jobs/{job_id}/weights.npz")), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("onehot", [False, True])
def test_softmax_accuracy_is_that_of_the_shipped_weights(redis_client, store, settings, onehot):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 2)) * 100
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    ds = datasets.save_dataset(
        redis_client,
        store,
        tenant="public",
        name="three",
        source="test",
        X=X,
        Y=np.eye(3)[y] if onehot else y,
        label_kind="onehot" if onehot else "integer",
    )
    job_id = job_for(
        redis_client,
        ds,
        model={"hidden_layers": [8], "output": "softmax"},
        training={"epochs": 20},
        preprocess={"scale": 0.01},
    )
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "succeeded"
    labels = predict(weights_of(store, job_id), (X / 100.0).T, hidden_activation="relu", output="softmax")
    assert jobs.get_job(redis_client, job_id)["metrics"]["train_accuracy"] == float(np.mean(labels == y))


def test_second_run_of_a_finished_job_does_nothing(redis_client, store, settings):
    job_id = job_for(redis_client, dataset(redis_client, store), training={"epochs": 3})
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "succeeded"
    assert run_job(job_id, settings=settings, r=redis_client, store=store) is None
    assert jobs.get_job(redis_client, job_id)["attempts"] == 1
    assert len(jobs.get_history(redis_client, job_id)) == 3


def test_spec_that_does_not_fit_the_dataset_fails_readably(redis_client, store, settings):
    job_id = job_for(redis_client, dataset(redis_client, store, kind="integer"), training={"epochs": 3})
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "failed"
    job = jobs.get_job(redis_client, job_id)
    assert job["error"] == (
        "model.output: output 'sigmoid' needs binary labels (0/1); dataset 'integer-set' has 3 classes: "
        "use output 'softmax'."
    )
    assert not redis_client.sismember(keys.ACTIVE, job_id)
    assert redis_client.hget(keys.STATS, "jobs_failed_total") == "1"


def test_divergence_fails_with_the_models_advice(redis_client, store, settings):
    ds = dataset(redis_client, store, kind="continuous")
    job_id = job_for(
        redis_client,
        ds,
        model={"hidden_layers": [4], "output": "linear"},
        training={"epochs": 50, "learning_rate": 10.0, "optimizer": "gd"},
    )
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "failed"
    error = jobs.get_job(redis_client, job_id)["error"]
    assert "epoch" in error.lower() and "Traceback" not in error
    assert not store.exists(f"jobs/{job_id}/weights.npz")


def test_lost_lease_stops_and_writes_nothing(redis_client, store, settings):
    ds = dataset(redis_client, store, m=4000)
    job_id = job_for(redis_client, ds, model={"hidden_layers": [32, 32]}, training={"epochs": 100_000})
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=run_job(job_id, settings=settings, r=redis_client, store=store))
    )
    thread.start()
    deadline = time.monotonic() + 30
    while len(jobs.get_history(redis_client, job_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    redis_client.set(keys.job_lease(job_id), "another-worker", px=60_000)  # someone else owns it now
    thread.join(30)
    assert not thread.is_alive()
    assert outcome["result"] is None
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "running" and job["finished_at"] is None and job["artifacts"] is None
    assert redis_client.get(keys.job_lease(job_id)) == "another-worker"
    n = len(jobs.get_history(redis_client, job_id))
    time.sleep(0.3)
    assert len(jobs.get_history(redis_client, job_id)) == n
    assert not store.exists(f"jobs/{job_id}/weights.npz")


def _gpu_available() -> bool:
    from dnnq.models.backend import gpu_available

    return gpu_available()


GPU = _gpu_available()  # once, at collection


@pytest.mark.skipif(GPU, reason="a GPU is present: the no-GPU message cannot be observed here")
def test_gpu_job_without_a_gpu_fails_readably(redis_client, store, settings):
    job_id = job_for(redis_client, dataset(redis_client, store), training={"epochs": 2}, device="gpu")
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "failed"
    error = jobs.get_job(redis_client, job_id)["error"]
    assert "gpu" in error.lower() and "Traceback" not in error


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="CuPy/GPU not available")
def test_gpu_job_trains_on_the_gpu_like_the_cpu(redis_client, store, settings):
    ds = dataset(redis_client, store)
    results = {}
    for device in ("cpu", "gpu"):
        job_id = job_for(redis_client, ds, training={"epochs": 10, "dtype": "float64"}, device=device)
        assert run_job(job_id, settings=settings, r=redis_client, store=store) == "succeeded"
        job = jobs.get_job(redis_client, job_id)
        assert job["device"].startswith(device)
        results[device] = jobs.get_history(redis_client, job_id)
    for a, b in zip(results["cpu"], results["gpu"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)


def test_gpu_job_on_the_cupy_stand_in_trains_and_exports_like_the_cpu(
    redis_client, store, settings, monkeypatch, caplog, request
):
    """The runner's GPU path where no GPU is: on the CuPy stand-in (tests/models/fake_cupy.py: device
    arrays that refuse host arrays and implicit conversion) a device='gpu' job trains, checkpoints
    and exports from device arrays, says where it ran, and gives the CPU job's history and weights.
    Its steps replay from a captured graph, and the job.succeeded event says so."""
    import io
    import logging

    import dnnq.models.backend as backend
    from tests.models import fake_cupy

    fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()  # the smoke test runs again, on the stand-in, and after the test on what is there
    request.addfinalizer(backend.forget_gpu_check)
    ds = dataset(redis_client, store, kind="integer", m=300)
    runs, graphs = {}, {}
    for device in ("cpu", "gpu"):
        job_id = job_for(
            redis_client,
            ds,
            model={"hidden_layers": [8, 4], "output": "softmax"},
            training={"epochs": 5, "batch_size": 64, "checkpoint_every": 2},
            device=device,
        )
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert run_job(job_id, settings=settings, r=redis_client, store=store) == "succeeded"
        done = [rec for rec in caplog.records if rec.getMessage() == "job.succeeded"]
        graphs[device] = getattr(done[0], "step_graph", None)
        job = jobs.get_job(redis_client, job_id)
        with np.load(io.BytesIO(store.get(f"jobs/{job_id}/weights.npz")), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
        runs[device] = (job["device"], jobs.get_history(redis_client, job_id), weights)
    assert runs["cpu"][0] == "cpu" and runs["gpu"][0] == "gpu:0"
    assert graphs["cpu"] is None and graphs["gpu"].startswith("on: ") and "from 1 capture" in graphs["gpu"]
    assert [(e["loss"], e["accuracy"]) for e in runs["gpu"][1]] == [(e["loss"], e["accuracy"]) for e in runs["cpu"][1]]
    assert runs["gpu"][2].keys() == runs["cpu"][2].keys()
    for key, value in runs["cpu"][2].items():
        np.testing.assert_array_equal(runs["gpu"][2][key], value)


def test_interrupted_worker_leaves_the_job_to_the_sweeper(redis_client, store, settings, monkeypatch):
    from dnnq import models

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "fit", interrupted)
    job_id = job_for(redis_client, dataset(redis_client, store), training={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_job(job_id, settings=settings, r=redis_client, store=store)
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "running" and job["error"] is None  # not failed: resumable
    redis_client.delete(keys.job_lease(job_id))  # as when the lease expires
    assert jobs.requeue_expired(redis_client) == [job_id]


@pytest.mark.skipif(GPU, reason="a GPU is present: CuPy may be loaded in this test process, nothing to show here")
def test_cpu_worker_reports_no_gpu_memory_and_never_loads_cupy(redis_client, store, settings):
    import sys

    from dnnq.models.backend import gpu_memory

    redis_client.hset(keys.worker("inproc"), mapping={"name": "inproc", "gpu_memory_used": "", "gpu_memory_total": ""})
    job_id = job_for(redis_client, dataset(redis_client, store), training={"epochs": 3}, device="cpu")
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "succeeded"
    assert "cupy" not in sys.modules and gpu_memory() is None
    assert redis_client.hget(keys.worker("inproc"), "gpu_memory_used") == ""


def test_gpu_memory_is_published_to_the_worker_hash(redis_client, store, settings, monkeypatch):
    """Unit test of the reporting path on the CuPy stand-in: this process's pool (bytes in live arrays,
    bytes held) and the device's size apart; gpu_memory_used is the pool's, not the whole device's
    (memGetInfo's used counts every process)."""
    import gc

    from dnnq.workers.runner import report_gpu_memory
    from tests.models import fake_cupy

    cupy = fake_cupy.installed(monkeypatch)
    gc.collect()
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.used_bytes()
    x = cupy.zeros((1024,), dtype=cupy.float64)  # 8 KiB alive
    redis_client.hset(keys.worker("inproc"), mapping={"name": "inproc"})
    report_gpu_memory(redis_client, settings)
    worker = redis_client.hgetall(keys.worker("inproc"))
    assert worker["gpu_pool_used_bytes"] == str(base + 8192)
    assert worker["gpu_pool_total_bytes"] == worker["gpu_memory_used"] == str(pool.total_bytes())
    assert int(worker["gpu_memory_used"]) >= base + 8192
    assert worker["gpu_memory_total"] == str(16 << 30)  # the device's size, from memGetInfo
    del x


def test_a_failed_gpu_job_gives_the_pool_back(redis_client, store, settings, monkeypatch, request):
    """A GPU job that diverges mid-training fails readably, and the process keeps none of its device
    memory: the pool's blocks are given back after the failure and the hash says so."""
    import gc

    import dnnq.models.backend as backend
    from tests.models import fake_cupy

    cupy = fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    request.addfinalizer(backend.forget_gpu_check)
    gc.collect()
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.used_bytes()
    ds = dataset(redis_client, store, kind="continuous")
    job_id = job_for(
        redis_client,
        ds,
        model={"hidden_layers": [4], "output": "linear"},
        training={"epochs": 50, "learning_rate": 10.0, "optimizer": "gd"},
        device="gpu",
    )
    redis_client.hset(keys.worker("inproc"), mapping={"name": "inproc"})
    freed = pool.freed
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "failed"
    assert "epoch" in jobs.get_job(redis_client, job_id)["error"].lower()
    assert pool.freed >= freed + 2  # fit's own release, and the runner's once the error was handled
    assert pool.used_bytes() == base and pool.total_bytes() == base
    assert redis_client.hget(keys.worker("inproc"), "gpu_pool_used_bytes") == str(base)


def test_one_redis_client_per_training_process_across_jobs(redis_client, store, settings):
    """run_job without a client uses its process's one (no new connection per job), and a forked
    child makes its own instead of sharing the parent's sockets."""
    import os

    from dnnq.workers import runner

    ds = dataset(redis_client, store)
    first = job_for(redis_client, ds, training={"epochs": 2})
    second = job_for(redis_client, ds, training={"epochs": 2, "seed": 1})
    assert run_job(first, settings=settings, store=store) == "succeeded"
    client = runner.process_redis(settings)
    assert run_job(second, settings=settings, store=store) == "succeeded"
    assert runner.process_redis(settings) is client
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a client of its own that works
        other = runner.process_redis(settings)
        ok = other is not client and other.ping()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_epochs_go_to_redis_in_batches_first_last_and_before_each_checkpoint(
    redis_client, store, settings, monkeypatch
):
    """With a long progress_flush_seconds the runner writes the first epoch (the job then says where it
    runs), the epochs up to each checkpoint before that checkpoint (a resume trims the history to the
    checkpoint's epoch, so it must be there) and the rest at the end: every epoch once, in order."""
    calls = []
    real = jobs.record_epochs

    def counting(r, job_id, token, entries, progress, device=None):
        calls.append(
            ([e["epoch"] for e in entries], progress["epoch"], device, store.exists(f"jobs/{job_id}/checkpoint.npz"))
        )
        return real(r, job_id, token, entries, progress, device)

    monkeypatch.setattr(jobs, "record_epochs", counting)
    slow = settings.model_copy(update={"progress_flush_seconds": 3600})
    ds = dataset(redis_client, store)
    job_id = job_for(redis_client, ds, training={"epochs": 10, "checkpoint_every": 4})
    assert run_job(job_id, settings=slow, r=redis_client, store=store) == "succeeded"
    assert [c[0] for c in calls] == [[1], [2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [c[1] for c in calls] == [1, 4, 8, 10]  # progress: the last epoch of each batch
    assert calls[0][2] == "cpu" and all(c[2] is None for c in calls[1:])
    assert calls[1][3] is False  # epochs 1-4 were in Redis before the epoch-4 checkpoint was written
    assert [h["epoch"] for h in jobs.get_history(redis_client, job_id)] == list(range(1, 11))
    assert redis_client.hget(keys.STATS, "epochs_total") == "10"


def test_a_diverging_job_keeps_the_epochs_it_trained(redis_client, store, settings):
    """Epochs still waiting for their batch when fit raises are written before the job fails."""
    slow = settings.model_copy(update={"progress_flush_seconds": 3600})
    ds = dataset(redis_client, store, kind="continuous")
    job_id = job_for(
        redis_client,
        ds,
        model={"hidden_layers": [4], "output": "linear"},
        training={"epochs": 50, "learning_rate": 10.0, "optimizer": "gd", "checkpoint_every": 1000},
    )
    assert run_job(job_id, settings=slow, r=redis_client, store=store) == "failed"
    history = jobs.get_history(redis_client, job_id)
    job = jobs.get_job(redis_client, job_id)
    assert len(history) >= 2, history  # more than the first epoch's own write
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert job["progress"]["epoch"] == len(history)


@pytest.mark.parametrize(
    "seconds, epoch_period, expected",
    [
        (3600.0, None, []),  # by time, and the job is shorter than the period: none
        (1e-9, None, [1, 2, 3, 4, 5]),  # by time, a period shorter than any epoch: every epoch but the last
        (1e-9, 2, [2, 4]),  # an epoch period (the job's or DNNQ_CHECKPOINT_EVERY) wins over time
    ],
)
def test_checkpoints_by_epochs_when_asked_else_by_time(
    redis_client, store, settings, monkeypatch, seconds, epoch_period, expected
):
    saved = []
    real = artifacts.save_checkpoint
    monkeypatch.setattr(artifacts, "save_checkpoint", lambda st, jid, ck: saved.append(ck.epoch) or real(st, jid, ck))
    timed = settings.model_copy(update={"checkpoint_seconds": seconds, "checkpoint_every": epoch_period})
    ds = dataset(redis_client, store)
    job_id = job_for(redis_client, ds, training={"epochs": 6})
    assert run_job(job_id, settings=timed, r=redis_client, store=store) == "succeeded"
    assert saved == expected


@pytest.fixture
def release_flag():
    """The process-wide 'release your job' flag and the signal handlers, as they were, after the test."""
    import signal

    from dnnq.workers import shutdown

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, shutdown.RELEASE_SIGNAL)}
    yield shutdown
    shutdown.clear_release_request()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _signal_at_epoch(monkeypatch, epoch: int, send) -> None:
    """Call send() once, from inside the job's epoch write that reaches `epoch` (in the training thread)."""
    real = jobs.record_epochs

    def recording(r, job_id, token, entries, progress, device=None):
        status = real(r, job_id, token, entries, progress, device)
        if progress["epoch"] == epoch:
            send()
        return status

    monkeypatch.setattr(jobs, "record_epochs", recording)


@pytest.mark.parametrize("how", ["sigterm", "release_signal"])
def test_a_shutdown_signal_releases_the_job_at_its_epochs_end_and_it_resumes_like_an_uninterrupted_run(
    redis_client, store, settings, monkeypatch, release_flag, how
):
    """SIGTERM to the training process, or RELEASE_SIGNAL (what the worker's main process forwards on
    shutdown): the epoch under way ends, a checkpoint is saved at it, the job is queued again at once
    with its message and its attempt unspent; the next run resumes from that checkpoint and ends where
    an uninterrupted run ends."""
    import os
    import signal

    shutdown = release_flag
    every_epoch = settings.model_copy(update={"progress_flush_seconds": 0.0, "checkpoint_seconds": 3600})
    ds = dataset(redis_client, store, m=200)
    spec = {"model": {"hidden_layers": [6]}, "training": {"epochs": 12, "batch_size": 32, "seed": 3}}
    baseline = job_for(redis_client, ds, **spec)
    assert run_job(baseline, settings=every_epoch, r=redis_client, store=store) == "succeeded"

    job_id = job_for(redis_client, ds, **spec)
    jobs.mark_sent(redis_client, baseline, job_id)
    if how == "release_signal":
        shutdown.install_release_handler()
    sig = signal.SIGTERM if how == "sigterm" else shutdown.RELEASE_SIGNAL
    sigterm_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        _signal_at_epoch(patch, 4, lambda: os.kill(os.getpid(), sig))
        assert run_job(job_id, settings=every_epoch, r=redis_client, store=store) == "queued"
    assert signal.getsignal(signal.SIGTERM) == sigterm_before  # the cooperative handler lived as long as the job

    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "queued" and job["attempts"] == 1 and job["error"] is None
    assert job["release_reason"] == shutdown.RELEASE_REASON
    assert not redis_client.exists(keys.job_lease(job_id))
    released_at = artifacts.load_checkpoint(store, job_id).epoch
    assert released_at == 5  # the signal came during epoch 4's write: epoch 5 was the one under way
    assert [h["epoch"] for h in jobs.get_history(redis_client, job_id)] == list(range(1, released_at + 1))
    (message,) = redis_client.lrange("default", 0, -1)  # its task, for the next worker to take
    assert json.loads(message)["headers"]["argsrepr"] == repr([job_id])

    shutdown.clear_release_request()  # a new worker process
    assert run_job(job_id, settings=every_epoch, r=redis_client, store=store) == "succeeded"
    job, reference = jobs.get_job(redis_client, job_id), jobs.get_job(redis_client, baseline)
    assert job["attempts"] == 1 and job["resumed_from_epoch"] == released_at
    assert [h["epoch"] for h in jobs.get_history(redis_client, job_id)] == list(range(1, 13))
    assert job["metrics"]["final_loss"] == pytest.approx(reference["metrics"]["final_loss"], rel=1e-9)
    for name, value in weights_of(store, baseline).items():
        np.testing.assert_allclose(weights_of(store, job_id)[name], value, rtol=1e-9)


def test_a_cancel_wins_over_a_release(redis_client, store, settings, monkeypatch, release_flag):
    """Cancelled while the worker shuts down: the job ends 'cancelled', it is not queued again."""
    every_epoch = settings.model_copy(update={"progress_flush_seconds": 0.0})
    job_id = job_for(redis_client, dataset(redis_client, store), training={"epochs": 30})

    def both():
        jobs.request_cancel(redis_client, job_id)
        release_flag.request_release()

    _signal_at_epoch(monkeypatch, 3, both)
    assert run_job(job_id, settings=every_epoch, r=redis_client, store=store) == "cancelled"
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "cancelled" and job.get("release_reason") is None
    assert jobs.queue_depth(redis_client, "default") == 0


def test_a_job_over_its_tenants_worker_cap_waits_queued(redis_client, store, settings):
    capped = settings.model_copy(update={"max_workers_per_tenant": 1})
    job_id = job_for(redis_client, dataset(redis_client, store), training={"epochs": 3})
    busy = keys.tenant_busy("public")
    redis_client.zadd(busy, {"other-worker:7": time.time() * 1000 + 60_000})
    assert run_job(job_id, settings=capped, r=redis_client, store=store) is None
    job = jobs.get_job(redis_client, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0
    assert redis_client.zscore(keys.DEFERRED, job_id) is not None
    assert redis_client.zrange(busy, 0, -1) == ["other-worker:7"]

    redis_client.zrem(busy, "other-worker:7")
    assert run_job(job_id, settings=capped, r=redis_client, store=store) == "succeeded"
    assert redis_client.zcard(busy) == 0  # the process left its share when the job ended


def test_the_heartbeat_keeps_a_long_jobs_share(redis_client, store, settings):
    capped = settings.model_copy(update={"max_workers_per_tenant": 1})
    job_id = job_for(redis_client, dataset(redis_client, store, m=4000), training={"epochs": 100_000})
    busy = keys.tenant_busy("public")
    thread = threading.Thread(
        target=run_job, args=(job_id,), kwargs={"settings": capped, "r": redis_client, "store": store}
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while redis_client.zcard(busy) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = redis_client.zscore(busy, f"inproc:{os.getpid()}")
        assert first is not None
        time.sleep(2.5)  # past the 2 s lease: renewed, not expired
        assert redis_client.zscore(busy, f"inproc:{os.getpid()}") > first
        other = job_for(redis_client, dataset(redis_client, store, seed=2), training={"epochs": 3})
        deferred = jobs.claim_within_share(redis_client, other, "t", 2000, jobs.Share("public", "elsewhere:1", 1))
        assert deferred is jobs.ClaimOutcome.DEFERRED
    finally:
        jobs.request_cancel(redis_client, job_id)
        thread.join(30)
    assert jobs.get_job(redis_client, job_id)["status"] == "cancelled"
    assert redis_client.zcard(busy) == 0
