"""run_job(job_id): claim, load data, fit with callbacks, write artifacts, finish.

Safe to run twice: the claim is atomic, so a duplicate delivery returns without training. While it
trains, a heartbeat thread renews the lease; if renewal fails the lease is lost (another worker
may already have the job), training stops at the next epoch and nothing more is written.

When the worker shuts down (its main process forwards RELEASE_SIGNAL to the pool children, or a
SIGTERM reaches the training process itself), the job stops at the end of its epoch, saves a
checkpoint and is released: queued again at once, its attempt not spent (jobs.release).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid

import numpy as np
import redis
from dnnq.workers import artifacts, jobs
from dnnq.workers.artifact_store import ArtifactStore, open_store
from dnnq.workers.datasets import get_dataset, load_arrays
from dnnq.workers.logs import event
from dnnq.workers.settings import WorkerSettings, get_settings, redis_client
from dnnq.workers.spec import JobSpec, SpecError, to_train_config

__all__ = ["RELEASE_REASON", "RELEASE_SIGNAL", "Heartbeat", "install_release_handler", "request_release", "run_job"]

RELEASE_SIGNAL = signal.SIGUSR2  # neither Celery nor billiard (without sigprotection) uses it in a pool child
RELEASE_REASON = "released: worker shutting down"
# Set once this process is asked to hand its job back; never cleared: the process is on its way out.
_release_requested = threading.Event()


def request_release(signum=None, frame=None) -> None:
    """Ask the running job (or the next one) to stop at its epoch's end and be released."""
    _release_requested.set()


def install_release_handler() -> None:
    """RELEASE_SIGNAL -> request_release, in this process (a pool child: Celery's worker_process_init)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(RELEASE_SIGNAL, request_release)


def _cooperative_sigterm():
    """While a job trains: the first SIGTERM asks for a release instead of raising SystemExit in the
    middle of an epoch (billiard's handler); a second one does what the previous handler did.
    Returns the handler to put back, or None when not in the main thread (no handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    received = []

    def on_sigterm(signum, frame):
        received.append(signum)
        if len(received) == 1:
            request_release()
            return
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return previous


class Heartbeat(threading.Thread):
    """Renews the job's lease every heartbeat_seconds; sets `lost` when the lease is gone."""

    def __init__(self, r, job_id: str, token: str, settings: WorkerSettings):
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.r, self.job_id, self.token = r, job_id, token
        self.period, self.lease_ms = settings.heartbeat_seconds, settings.lease_ms
        self.lost = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                if not jobs.renew_lease(self.r, self.job_id, self.token, self.lease_ms):
                    self.lost.set()
                    event("job.lease_lost", logging.WARNING, job_id=self.job_id)
                    return
            except Exception as exc:  # Redis blip: keep trying until the lease itself runs out
                event("job.lease_renew_error", logging.WARNING, job_id=self.job_id, error=str(exc))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# One Redis client per training process and URL, kept across jobs: a client per job opened a new
# connection (TCP, then the HELLO/SETINFO handshake) for every job, ~3% of a tiny job's time. The pid
# is in the key because a forked child must not share its parent's sockets.
_CLIENTS: dict[tuple[int, str | None], redis.Redis] = {}


def _process_redis(settings: WorkerSettings) -> redis.Redis:
    key = (os.getpid(), settings.redis_url)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = redis_client(settings)
    return client


def run_job(
    job_id: str, *, settings: WorkerSettings | None = None, r=None, store: ArtifactStore | None = None
) -> str | None:
    """Train job_id to a terminal status. Returns that status ("queued" when released because the
    worker is shutting down), or None when this call did not own the job to the end (not claimed,
    or the lease was lost)."""
    settings = settings or get_settings()
    r = r if r is not None else _process_redis(settings)
    store = store if store is not None else open_store(settings)
    token = f"{settings.worker_name}:{os.getpid()}:{uuid.uuid4().hex}"
    if not jobs.claim(r, job_id, token, settings.lease_ms):
        job = jobs.get_job(r, job_id)
        event("job.not_claimed", job_id=job_id, status=job["status"] if job else None)
        return None
    heartbeat = Heartbeat(r, job_id, token, settings)
    heartbeat.start()
    _set_current_job(r, settings, job_id)
    previous_sigterm = _cooperative_sigterm()
    try:
        return _train(r, store, settings, job_id, token, heartbeat)
    except (KeyboardInterrupt, SystemExit):
        # The worker is shutting down, the job did nothing wrong: leave the lease to expire so the
        # sweeper requeues it and it resumes from its last checkpoint.
        event("job.interrupted", logging.WARNING, job_id=job_id)
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Redis went away, not the job: it must not end 'failed' (a Redis back an instant later would
        # take that write). The lease expires, the sweeper requeues the job, it resumes from its checkpoint.
        event("job.redis_unreachable", logging.WARNING, job_id=job_id, error=str(exc))
        return None
    except Exception as exc:  # every failure ends the job 'failed' with a readable message
        expected = _expected_errors()
        message = _readable(exc, expected)
        # Known errors (bad spec, divergence, no GPU) need no traceback; anything else logs one.
        event("job.failed", logging.ERROR, exc_info=not isinstance(exc, expected), job_id=job_id, error=message)
        if heartbeat.lost.is_set() or not jobs.finish(r, job_id, token, "failed", error=message):
            event("job.finish_refused", logging.WARNING, job_id=job_id, status="failed")
            return None
        return "failed"
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        heartbeat.stop()
        _set_current_job(r, settings, "")


def _train(r, store, settings, job_id: str, token: str, heartbeat: Heartbeat) -> str | None:
    from dnnq.models import fit

    t0 = time.perf_counter()
    job = jobs.get_job(r, job_id)
    spec = JobSpec.model_validate(job["spec"])
    meta = _dataset(r, spec.dataset_id, "dataset_id")
    val_meta = _dataset(r, spec.validation_dataset_id, "validation_dataset_id") if spec.validation_dataset_id else None
    cfg = to_train_config(spec, meta, val_meta)
    X, Y = _arrays(store, spec, meta, cfg)
    X_val, Y_val = _arrays(store, spec, val_meta, cfg) if val_meta else (None, None)
    t_loaded = time.perf_counter()

    ckpt = artifacts.load_checkpoint(store, job_id)
    resume_epoch = ckpt.epoch if ckpt is not None else 0
    if ckpt is not None or job["attempts"] > 1:
        if not jobs.record_resume(r, job_id, token, resume_epoch):
            event("job.lease_lost", logging.WARNING, job_id=job_id, at="resume")
            return None
        event("job.resumed", job_id=job_id, from_epoch=resume_epoch, attempt=job["attempts"])
    event(
        "job.started",
        job_id=job_id,
        attempt=job["attempts"],
        epochs=cfg.epochs,
        layer_dims=cfg.layer_dims,
        examples=int(X.shape[1]),
        device_requested=cfg.device,
    )

    # Checkpoints every `every` epochs when the job or the worker says so; else by time: every ten
    # epochs (the old default) wrote 250 fsynced checkpoints in the course's 2,500-epoch cat job,
    # ~1 s of its 14, while a crash of a 4 ms-epoch job loses little work either way.
    every = spec.training.checkpoint_every or settings.checkpoint_every
    checkpointed_at = [time.monotonic()]
    cancelled = threading.Event()
    # Decided in on_epoch, not in should_stop: the epoch training stops after is the one checkpointed.
    releasing = [False]
    gpu_reported = [0.0]  # monotonic time of the last GPU memory report
    # Finished epochs not yet in Redis, and the progress they end on. They go in one round trip at
    # most every progress_flush_seconds: a round trip per epoch was ~20% of a 2,500-epoch job of
    # 4 ms epochs (the course's cat model). Always written at once: the first epoch (the job then
    # says where it runs), the last, and every epoch a checkpoint is saved at, before the checkpoint,
    # so that a resume from it never finds fewer history entries than the epochs it skips.
    pending: list[dict] = []
    progress: dict = {}
    flushed_at = [time.monotonic()]

    def flush(device: str | None = None) -> None:
        status = jobs.record_epochs(r, job_id, token, pending, progress, device=device)
        pending.clear()
        flushed_at[0] = time.monotonic()
        if status == jobs.LEASE_LOST:
            heartbeat.lost.set()
        elif status == jobs.Status.CANCELLING.value:
            cancelled.set()

    def on_epoch(state) -> None:
        entry = state.record.to_dict()
        pending.append(entry)
        progress.update(epoch=state.epoch, epochs=state.epochs, loss=entry["loss"])
        first = state.epoch == resume_epoch + 1
        releasing[0] = releasing[0] or (_release_requested.is_set() and state.epoch < state.epochs)
        if every:
            checkpoint_due = state.epoch % every == 0
        else:
            checkpoint_due = time.monotonic() - checkpointed_at[0] >= settings.checkpoint_seconds
        checkpoint_due = (checkpoint_due or releasing[0]) and state.epoch < state.epochs
        if (
            first
            or checkpoint_due
            or state.epoch >= state.epochs
            or time.monotonic() - flushed_at[0] >= settings.progress_flush_seconds
        ):
            flush(device=state.device if first else None)
        if heartbeat.lost.is_set():
            return
        if checkpoint_due and not cancelled.is_set():
            artifacts.save_checkpoint(store, job_id, state.checkpoint())
            checkpointed_at[0] = time.monotonic()
        now = time.monotonic()
        if now - gpu_reported[0] >= GPU_REPORT_SECONDS:
            gpu_reported[0] = now
            _report_gpu_memory(r, settings)

    def should_stop() -> bool:
        return heartbeat.lost.is_set() or cancelled.is_set() or releasing[0]

    try:
        result = fit(X, Y, cfg, X_val=X_val, Y_val=Y_val, on_epoch=on_epoch, should_stop=should_stop, checkpoint=ckpt)
    finally:
        if pending and not heartbeat.lost.is_set():  # fit raised (e.g. diverged): keep the epochs it did
            try:
                flush()
            except Exception as exc:
                event("job.progress_lost", logging.WARNING, job_id=job_id, epochs=len(pending), error=str(exc))
        r.hincrbyfloat(jobs.STATS_KEY, "training_seconds_total", time.perf_counter() - t_loaded)
        _report_gpu_memory(r, settings)  # after fit released CuPy's pool: what the next job starts with

    if heartbeat.lost.is_set():
        event("job.abandoned", logging.WARNING, job_id=job_id, reason="lease lost", epochs=result.epochs_completed)
        return None
    if result.stopped and releasing[0] and not cancelled.is_set():
        outcome = _release(r, job_id, token, job.get("queue") or "default", progress.get("epoch"))
        if outcome != jobs.Status.CANCELLING.value:  # a cancel that came in meanwhile ends it below
            return outcome
    timings = {"load_s": round(t_loaded - t0, 4), **{k: round(v, 4) for k, v in result.timings.items()}}
    last = result.history[-1] if result.history else None
    # Accuracies of the parameters we ship (an epoch's running accuracy is measured while the
    # weights still change), computed as a client predicting on the same rows would get them.
    metrics = {
        "final_loss": last.loss if last else None,
        "train_accuracy": _accuracy(result.parameters, store, spec, meta),
        "validation_accuracy": _accuracy(result.parameters, store, spec, val_meta) if val_meta else None,
    }
    if result.stopped:
        ok = jobs.finish(r, job_id, token, "cancelled", metrics=metrics, device=result.device, timings=timings)
        event("job.cancelled", job_id=job_id, epochs=result.epochs_completed, recorded=ok)
        artifacts.delete_checkpoint(store, job_id)
        return "cancelled" if ok else None
    if not jobs.renew_lease(r, job_id, token, settings.lease_ms):  # do not write weights for a job we lost
        event("job.abandoned", logging.WARNING, job_id=job_id, reason="lease lost before artifacts")
        return None
    shas = artifacts.save_trained(
        store,
        job_id,
        result.parameters,
        {
            "hidden_activation": spec.model.hidden_activation,
            "output": spec.model.output,
            "scale": spec.preprocess.scale,
            "classes": meta.get("classes"),
            "metrics": metrics,
            "dataset_id": spec.dataset_id,
            "label_kind": meta.get("label_kind"),
        },
    )
    timings["total_s"] = round(time.perf_counter() - t0, 4)
    ok = jobs.finish(
        r, job_id, token, "succeeded", metrics=metrics, artifacts=shas, device=result.device, timings=timings
    )
    if not ok:
        event("job.finish_refused", logging.WARNING, job_id=job_id, status="succeeded")
        return None
    artifacts.delete_checkpoint(store, job_id)
    # on a GPU, whether the steps replayed from CUDA graphs or why not (models/stepgraph.py): the
    # first thing to look at when a GPU job trains slower than expected
    graph = {} if result.step_graph is None else {"step_graph": result.step_graph}
    event("job.succeeded", job_id=job_id, device=result.device, **metrics, seconds=timings["total_s"], **graph)
    return "succeeded"


def _release(r, job_id: str, token: str, queue: str, epoch: int) -> str | None:
    """Hand the job back (its checkpoint is at `epoch`); "queued", "cancelling" (a cancel came in
    since the last epoch's write: the caller finishes it 'cancelled'), or None when the lease is gone."""
    from dnnq.workers.celery_wire import train_message

    outcome = jobs.release(r, job_id, token, RELEASE_REASON, queue=queue, message_for=train_message)
    if outcome == jobs.Status.QUEUED.value:
        event("job.released", job_id=job_id, reason=RELEASE_REASON, checkpoint_epoch=epoch)
        return outcome
    if outcome == jobs.Status.CANCELLING.value:
        return outcome
    event("job.release_refused", logging.WARNING, job_id=job_id, status=outcome)
    return None


def _dataset(r, dataset_id: str, field: str) -> dict:
    meta = get_dataset(r, dataset_id)
    if meta is None:
        raise SpecError(field, f"dataset '{dataset_id}' no longer exists: upload it again and resubmit.")
    return meta


def _arrays(store, spec: JobSpec, meta: dict, cfg):
    """Stored examples-first arrays -> features-first (n_x, m) / (n_y, m) views, scaled as the spec says."""
    X, Y = load_arrays(store, meta["id"])
    X = X.astype(cfg.dtype, copy=False)
    X = spec.preprocess.apply(X)
    if spec.model.output != "softmax" or meta["label_kind"] in ("onehot",):
        Y = Y.astype(cfg.dtype, copy=False)
    return X.T, Y.T


def _accuracy(params: dict, store, spec: JobSpec, meta: dict, chunk: int = 65536) -> float | None:
    """Share of examples models.predict labels correctly, on float64 inputs scaled as the API's predict
    route scales them (None for regression)."""
    from dnnq.models import predict

    if spec.model.output == "linear":
        return None
    # Read again rather than kept from before training: holding the raw arrays beside fit's compute-dtype
    # copy would cost up to 1.5x the data's memory for the whole run, to save one read at the end.
    X, Y = load_arrays(store, meta["id"])
    truth = Y.argmax(axis=1) if meta["label_kind"] == "onehot" else Y[:, 0]
    correct = 0
    for s in range(0, X.shape[0], chunk):
        xb = spec.preprocess.apply(X[s : s + chunk].astype(np.float64))
        with np.errstate(over="ignore"):  # exp overflow in sigmoid saturates to 0/1, which is right
            labels = np.asarray(
                predict(params, xb.T, hidden_activation=spec.model.hidden_activation, output=spec.model.output)
            )
        correct += int(np.count_nonzero(labels.reshape(-1) == truth[s : s + chunk]))
    return correct / X.shape[0]


GPU_REPORT_SECONDS = 5.0  # GPU memory goes to the worker's hash (for /metrics) at most this often


def _report_gpu_memory(r, settings: WorkerSettings) -> None:
    """Publish this training process's GPU memory (nothing on a CPU-only worker: models never
    loaded CuPy there)."""
    from dnnq.models.backend import gpu_memory

    mem = gpu_memory()
    if mem is None:
        return
    try:
        r.hset(f"dnnq:worker:{settings.worker_name}", mapping={"gpu_memory_used": mem[0], "gpu_memory_total": mem[1]})
    except Exception:  # the worker hash is informational; never fail a job over it
        pass


def _set_current_job(r, settings: WorkerSettings, job_id: str) -> None:
    key = f"dnnq:worker:{settings.worker_name}"
    try:
        if r.exists(key):
            r.hset(key, "current_job", job_id)
    except Exception:  # the worker hash is informational; never fail a job over it
        pass


def _expected_errors() -> tuple[type[BaseException], ...]:
    try:
        from dnnq.models import ConfigError, DeviceUnavailable, TrainingDiverged
    except ImportError:
        return (SpecError,)
    return (SpecError, ConfigError, DeviceUnavailable, TrainingDiverged)


def _readable(exc: BaseException, expected: tuple[type[BaseException], ...]) -> str:
    """One line for the job record: what failed and, for known errors, what to do. No traceback."""
    if isinstance(exc, SpecError):
        return f"{exc.field}: {exc.message}"
    if isinstance(exc, expected):
        return str(exc)
    name = type(exc).__name__
    if name == "SoftTimeLimitExceeded":
        return "The job ran past DNNQ_MAX_JOB_SECONDS and was stopped: use fewer epochs or a smaller network."
    if isinstance(exc, MemoryError):
        return "The worker ran out of memory: use a smaller batch_size, fewer hidden units, or float32."
    return f"{name}: {exc}"
