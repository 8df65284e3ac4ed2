"""run_job(job_id): claim, load, train with an epoch reporter, store the artifacts, record the outcome.

Safe to run twice: the claim is atomic, so a duplicate delivery returns without training. While it
trains, a heartbeat thread renews the lease; if renewal fails the lease is lost (another worker
may already have the job), training stops at the next epoch and nothing more is written.

What happens between epochs (progress writes, checkpoints, cancellation) is workers/reporter.py;
a job handed back when the worker shuts down, workers/shutdown.py; its inputs, workers/inputs.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis

from dnnq.workers import artifacts, jobs, keys
from dnnq.workers.artifact_store import ArtifactStore, open_store
from dnnq.workers.inputs import JobInputs, ScoringRows, accuracy, load_inputs
from dnnq.workers.job_reads import record_key
from dnnq.workers.logs import event
from dnnq.workers.reporter import EpochReporter
from dnnq.workers.settings import WorkerSettings, get_settings, redis_client
from dnnq.workers.shutdown import RELEASE_REASON, cooperative_sigterm, release_requested
from dnnq.workers.spec import SpecError

if TYPE_CHECKING:
    from dnnq.models import FitResult

__all__ = ["Heartbeat", "claimed", "leave_share", "process_redis", "report_gpu_memory", "run_job", "worker_share"]


class Heartbeat(threading.Thread):
    """Renews the job's lease (and the process's share of its tenant's workers) every heartbeat_seconds;
    sets `lost` when the lease is gone."""

    def __init__(
        self, r: redis.Redis, job_id: str, token: str, settings: WorkerSettings, share: jobs.Share | None = None
    ) -> None:
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.r, self.job_id, self.token, self.share = r, job_id, token, share
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
                if self.share is not None:
                    jobs.renew_share(self.r, self.share, self.lease_ms)
            except Exception as exc:  # Redis blip: keep trying until the lease itself runs out
                event("job.lease_renew_error", logging.WARNING, job_id=self.job_id, error=str(exc))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# One Redis client per training process and URL, kept across jobs: a client per job opened a new
# connection and handshake for every job (docs/perf.md, "Worker"). The pid is in the key because a
# forked child must not share its parent's sockets.
_CLIENTS: dict[tuple[int, str | None], redis.Redis] = {}


def process_redis(settings: WorkerSettings) -> redis.Redis:
    """This process's Redis client for settings.redis_url, made on first use, kept across jobs."""
    key = (os.getpid(), settings.redis_url)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = redis_client(settings)
    return client


class LeaseWatch(Protocol):
    """What training reads of a lease's keeper (a Heartbeat, or workers/pack_runner.py's one per trial)."""

    lost: threading.Event


Loader = Callable[[redis.Redis, ArtifactStore, str], JobInputs]


@dataclass(frozen=True)
class _Claim:
    """A job this process has claimed, and what working on it needs: the lease `token` fences every write."""

    r: redis.Redis
    store: ArtifactStore
    settings: WorkerSettings
    job_id: str
    token: str
    heartbeat: LeaseWatch
    pack: dict[str, float] | None = None  # a sweep pack's trial: its size and wait, kept in the timings
    gram_cache: Any = None  # a sweep pack's models.gram.SharedGram: the data's Gram blocks, made once per pack
    # whether to hand the job back at its epoch's end (None: only when the worker shuts down); a sweep
    # pack's later trials also go back when the pack's Celery task nears its time limit (pack_runner.py)
    release_check: Callable[[], bool] | None = None


def run_job(
    job_id: str,
    *,
    settings: WorkerSettings | None = None,
    r: redis.Redis | None = None,
    store: ArtifactStore | None = None,
    celery_task_id: str | None = None,
) -> str | None:
    """Train job_id to a terminal status. Returns that status ("queued" when released because the
    worker is shutting down), or None when this call did not own the job to the end (not claimed,
    or the lease was lost). celery_task_id: the delivering task's, recorded by the claim."""
    settings = settings or get_settings()
    r = r if r is not None else process_redis(settings)
    store = store if store is not None else open_store(settings)
    token = f"{settings.worker_name}:{os.getpid()}:{uuid.uuid4().hex}"
    share = worker_share(r, settings, job_id)
    if not claimed(r, job_id, token, settings, share, celery_task_id):
        return None
    try:
        heartbeat = Heartbeat(r, job_id, token, settings, share)
        claim = _Claim(r, store, settings, job_id, token, heartbeat)
        heartbeat.start()
        _set_current_job(r, settings, job_id)
        try:
            with cooperative_sigterm():
                return _train_to_the_end(claim)
        finally:
            heartbeat.stop()
            _set_current_job(r, settings, "")
    finally:
        leave_share(r, share)


def worker_share(r: redis.Redis, settings: WorkerSettings, job_id: str) -> jobs.Share | None:
    """This process's share of job_id's tenant's workers (None: no DNNQ_MAX_WORKERS_PER_TENANT, or no tenant
    to count against; then nothing is read)."""
    if settings.max_workers_per_tenant <= 0:
        return None
    key = record_key(job_id)
    tenant = r.hget(key, "tenant") if key is not None else None
    if not tenant:
        return None
    return jobs.Share(str(tenant), f"{settings.worker_name}:{os.getpid()}", settings.max_workers_per_tenant)


def claimed(
    r: redis.Redis,
    job_id: str,
    token: str,
    settings: WorkerSettings,
    share: jobs.Share | None,
    celery_task_id: str | None = None,
) -> bool:
    """Claim the job delivered to this task (within `share`); a job not claimed is logged as not claimed,
    or as deferred: its tenant's processes are at the cap, and it waits queued for the sweeper's next send."""
    outcome = jobs.claim_within_share(r, job_id, token, settings.lease_ms, share, celery_task_id)
    if outcome is jobs.ClaimOutcome.CLAIMED:
        return True
    if outcome is jobs.ClaimOutcome.DEFERRED and share is not None:
        event("job.deferred", job_id=job_id, tenant=share.tenant, max_workers_per_tenant=share.cap)
        return False
    job = jobs.get_job(r, job_id)
    event("job.not_claimed", job_id=job_id, status=job["status"] if job else None)
    return False


def leave_share(r: redis.Redis, share: jobs.Share | None) -> None:
    """The task has ended, however: the process no longer counts against its tenant's cap."""
    if share is None:
        return
    try:
        jobs.release_share(r, share)
    except Exception as exc:  # Redis gone: the entry drops out when it expires, a lease from its last renewal
        event("job.share_release_error", logging.WARNING, tenant=share.tenant, error=str(exc))


def _train_to_the_end(claim: _Claim, load: Loader = load_inputs) -> str | None:
    """_train, with every failure of the job (not of the worker or Redis) recorded as 'failed'.
    ``load``: how the job's inputs are read (a pack's trials share one dataset: workers/pack_runner.py)."""
    try:
        return _failing_alone(claim, lambda: _train(claim, load))
    finally:
        # after a failure too, once the error is handled: the prefork child keeps running jobs, so
        # what the job left in CuPy's pool goes back, and what the next job starts with is published
        _release_gpu_memory(claim)


def _failing_alone(claim: _Claim, run: Callable[[], str | None]) -> str | None:
    """run() (a job's training, or a stacked trial's end), its failure recorded 'failed' for that job alone."""
    job_id = claim.job_id
    try:
        return run()
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
        if claim.heartbeat.lost.is_set() or not jobs.finish(
            claim.r, job_id, claim.token, "failed", error=message, store=claim.store
        ):
            event("job.finish_refused", logging.WARNING, job_id=job_id, status="failed")
            return None
        return "failed"


def _train(claim: _Claim, load: Loader = load_inputs) -> str | None:
    """Load the claimed job, train it with an EpochReporter, store what it made, record the outcome."""
    from dnnq.models import fit

    r, store, settings, job_id, token = claim.r, claim.store, claim.settings, claim.job_id, claim.token
    t0 = time.perf_counter()
    inputs = load(r, store, job_id)
    t_loaded = time.perf_counter()
    ckpt = artifacts.load_checkpoint(store, job_id)
    resume_epoch = ckpt.epoch if ckpt is not None else 0
    if not _record_start(claim, inputs, resume_epoch, resumed=ckpt is not None):
        return None
    reporter = EpochReporter(
        r,
        store,
        settings,
        job_id,
        token,
        resume_epoch=resume_epoch,
        checkpoint_every=inputs.spec.training.checkpoint_every or settings.checkpoint_every,
        lease_lost=claim.heartbeat.lost,
        release_requested=claim.release_check or release_requested,
        report_gpu=lambda: report_gpu_memory(r, settings),
    )
    try:
        result = fit(
            inputs.X,
            inputs.Y,
            inputs.cfg,
            X_val=inputs.X_val,
            Y_val=inputs.Y_val,
            on_epoch=reporter.on_epoch,
            should_stop=reporter.should_stop,
            checkpoint=ckpt,
            path=settings.fit_path,
            gram_cache=claim.gram_cache,
        )
    finally:
        reporter.flush_remaining()
        r.hincrbyfloat(keys.STATS, "training_seconds_total", time.perf_counter() - t_loaded)

    if reporter.lease_is_lost:
        event("job.abandoned", logging.WARNING, job_id=job_id, reason="lease lost", epochs=result.epochs_completed)
        return None
    if result.stopped and reporter.releasing and not reporter.cancelled:
        outcome = _release(r, settings, job_id, token, inputs.record.get("queue") or "default", reporter.last_epoch)
        if outcome != jobs.Status.CANCELLING.value:  # a cancel that came in meanwhile ends it below
            return outcome
    timings = {"load_s": round(t_loaded - t0, 4), **{k: round(v, 4) for k, v in result.timings.items()}}
    timings.update(claim.pack or {})
    return _record_outcome(claim, inputs, result, timings, t0)


def _record_start(claim: _Claim, inputs: JobInputs, resume_epoch: int, *, resumed: bool) -> bool:
    """Log the start (and a resume: from a checkpoint, or a later attempt); False when the lease is gone."""
    job_id, attempt = claim.job_id, inputs.record["attempts"]
    if resumed or attempt > 1:
        if not jobs.record_resume(claim.r, job_id, claim.token, resume_epoch):
            event("job.lease_lost", logging.WARNING, job_id=job_id, at="resume")
            return False
        event("job.resumed", job_id=job_id, from_epoch=resume_epoch, attempt=attempt)
    event(
        "job.started",
        job_id=job_id,
        attempt=attempt,
        epochs=inputs.cfg.epochs,
        layer_dims=inputs.cfg.layer_dims,
        examples=int(inputs.X.shape[1]),
        device_requested=inputs.cfg.device,
    )
    return True


def _record_outcome(
    claim: _Claim,
    inputs: JobInputs,
    result: FitResult,
    timings: dict[str, float],
    t0: float,
    rows: tuple[ScoringRows | None, ScoringRows | None] = (None, None),
) -> str | None:
    """A finished or cancelled fit: 'cancelled', or the artifacts stored and 'succeeded'; None when
    the lease or the finish is refused. ``rows``: the training and validation rows already read for
    scoring (a sweep pack reads them once for all its trials), else each is read here."""
    r, store, job_id, token = claim.r, claim.store, claim.job_id, claim.token
    spec, meta = inputs.spec, inputs.meta
    last = result.history[-1] if result.history else None
    # Accuracies of the parameters we ship (an epoch's running accuracy is measured while the
    # weights still change), computed as a client predicting on the same rows would get them.
    metrics = {
        "final_loss": last.loss if last else None,
        "train_accuracy": accuracy(result.parameters, store, spec, meta, rows=rows[0]),
        "validation_accuracy": (
            accuracy(result.parameters, store, spec, inputs.val_meta, rows=rows[1]) if inputs.val_meta else None
        ),
    }
    if result.stopped:
        ok = jobs.finish(
            r, job_id, token, "cancelled", metrics=metrics, device=result.device, timings=timings, store=store
        )
        event("job.cancelled", job_id=job_id, epochs=result.epochs_completed, recorded=ok)
        artifacts.delete_checkpoint(store, job_id)
        return "cancelled" if ok else None
    if not jobs.renew_lease(r, job_id, token, claim.settings.lease_ms):  # do not write weights for a job we lost
        event("job.abandoned", logging.WARNING, job_id=job_id, reason="lease lost before artifacts")
        return None
    shas = artifacts.save_trained(
        store,
        job_id,
        result.parameters,
        {
            "hidden_activation": spec.model.hidden_activation,
            "output": spec.model.output,
            "input_scale": spec.preprocess.scale,
            "classes": meta.get("classes"),
            "metrics": metrics,
            "dataset_id": spec.dataset_id,
            "label_kind": meta.get("label_kind"),
        },
    )
    timings["total_s"] = round(time.perf_counter() - t0, 4)
    ok = jobs.finish(
        r,
        job_id,
        token,
        "succeeded",
        metrics=metrics,
        artifacts=shas,
        device=result.device,
        timings=timings,
        store=store,  # a long history moves to the store in the finish's own step
    )
    if not ok:
        event("job.finish_refused", logging.WARNING, job_id=job_id, status="succeeded")
        return None
    artifacts.delete_checkpoint(store, job_id)
    # on a GPU, whether the steps replayed from CUDA graphs or why not (models/stepgraph.py): the
    # first thing to look at when a GPU job trains slower than expected
    graph: dict[str, Any] = {} if result.step_graph is None else {"step_graph": result.step_graph}
    event(
        "job.succeeded",
        job_id=job_id,
        device=result.device,
        final_loss=metrics["final_loss"],
        train_accuracy=metrics["train_accuracy"],
        validation_accuracy=metrics["validation_accuracy"],
        seconds=timings["total_s"],
        **graph,
    )
    return "succeeded"


def _release(r: redis.Redis, settings: WorkerSettings, job_id: str, token: str, queue: str, epoch: int) -> str | None:
    """Hand the job back (its checkpoint is at `epoch`) and send its message again; "queued",
    "cancelling" (a cancel came in since the last epoch's write: the caller finishes it 'cancelled'),
    or None when the lease is gone."""
    from dnnq.workers.celery_app import send_train, sender_app

    outcome = jobs.release(r, job_id, token, RELEASE_REASON)
    if outcome == jobs.Status.QUEUED.value:
        try:  # listed in the outbox by the release: a send that fails is the sweeper's to retry
            send_train(job_id, queue, sender_app(settings.redis_url), resumed=True)
            jobs.mark_sent(r, job_id)
        except Exception as exc:
            event("job.send_failed", logging.WARNING, job_id=job_id, error=str(exc))
        event("job.released", job_id=job_id, reason=RELEASE_REASON, checkpoint_epoch=epoch)
        return outcome
    if outcome == jobs.Status.CANCELLING.value:
        return outcome
    event("job.release_refused", logging.WARNING, job_id=job_id, status=outcome)
    return None


def _release_gpu_memory(claim: _Claim) -> None:
    """Give this process's pooled GPU memory back and publish what is left (a no-op without CuPy)."""
    from dnnq.models.backend import release_gpu_memory

    with contextlib.suppress(Exception):  # a broken device must not hide the job's outcome
        release_gpu_memory()
    report_gpu_memory(claim.r, claim.settings)


def report_gpu_memory(r: redis.Redis, settings: WorkerSettings) -> None:
    """Publish this training process's GPU memory (nothing on a CPU-only worker: models never
    loaded CuPy there): its CuPy pool's bytes in live arrays and held from the device, and the
    device's size. gpu_memory_used is the pool's held bytes, this process's share of the device
    (other processes' memory is not this worker's); gpu_memory_total, the device's size, is what
    the API sizes GPU jobs against."""
    from dnnq.models.backend import gpu_memory

    mem = gpu_memory()
    if mem is None:
        return
    with contextlib.suppress(Exception):  # the worker hash is informational; never fail a job over it
        r.hset(
            keys.worker(settings.worker_name),
            mapping={
                "gpu_memory_used": mem.pool_held,
                "gpu_memory_total": mem.device_total,
                "gpu_pool_used_bytes": mem.pool_used,
                "gpu_pool_total_bytes": mem.pool_held,
            },
        )


def _set_current_job(r: redis.Redis, settings: WorkerSettings, job_id: str) -> None:
    key = keys.worker(settings.worker_name)
    with contextlib.suppress(Exception):  # the worker hash is informational; never fail a job over it
        if r.exists(key):
            r.hset(key, "current_job", job_id)


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
