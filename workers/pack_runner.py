"""run_trial(job_id): a sweep trial's message trains the trial's whole pack in this process.

A sweep's trials that share a pack id (workers/sweeps.py `pack_key`: same datasets, network, batch
size, order, dtype, device, input scale) need the same data. The first trial message a worker takes
claims its own trial, then every sibling still queued, each through jobs.claim (atomic per trial: a
sibling another worker already took is not in the pack) and within the worker's memory (the pack's
estimate is checked as the API checks a job's). The dataset is loaded once and each trial trains
after the other in this process on the same arrays, through runner.py's own path: each trial keeps
its lease (one thread renews them all), EpochReporter (history, progress, cancel), checkpoints and
finish, so a trial that diverges or is cancelled ends alone and the next one starts. Each sibling's
own message later finds its job taken and does nothing.

With STACK_PACKS on, when every trial is float64, fit would take the Gram path for each (gd or
momentum, wide inputs), and the trials are all fresh (no checkpoint) or all resumed from checkpoints
at one epoch (gd only: fit_packed does not hold a resumed momentum's velocity), the pack trains as one
stacked computation (models.packed.fit_packed(path="gram"): X X^T once, the deeper layers batched),
each trial with its own EpochReporter (a cancelled trial leaves the stack, a diverging one fails
alone), their progress writes due by time together in one round trip (reporter.FlushGroup), the
training and validation rows read once to score every trial (inputs.ScoringRows), and runner's own
outcome path per trial (a trial whose end fails fails alone); ``timings.pack_stacked`` says so. Such a
pack is sized by its trials' summed memory. Otherwise the trials run one after another; what they
share is the loaded arrays, the process (warm caches, no dispatch) and, on the Gram path, the data's
Gram matrix X X^T (models.gram.SharedGram: the first trial's fit computes it, the others reuse it).
Either way every trial's numbers are its solo job's: one after another bit for bit, stacked to rounding
(1e-12 relative in float64; float32 packs are never stacked, STACKED_DTYPES).

After kill -9 every unfinished trial's lease expires, the sweeper requeues it and sends its message;
the first to arrive claims the queued siblings again, each resumes from its own checkpoint: stacked
again when they were checkpointed at one epoch (gd), else one after another. A shutdown (SIGTERM)
releases the trial training and every trial still waiting in the pack; so does the task's time limit
(DNNQ_MAX_JOB_SECONDS, the whole pack's) drawing near, for every trial but the first, which keeps the
whole limit as a solo job would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import redis

from dnnq.workers import artifacts, jobs, keys
from dnnq.workers.artifact_store import ArtifactStore, open_store
from dnnq.workers.inputs import JobInputs, ScoringRows, load_inputs, scoring_rows
from dnnq.workers.job_reads import record_key
from dnnq.workers.logs import event
from dnnq.workers.recovery import host_memory_bytes
from dnnq.workers.reporter import EpochReporter, FlushGroup
from dnnq.workers.runner import (
    _Claim,
    _expected_errors,
    _failing_alone,
    _readable,
    _record_outcome,
    _record_start,
    _release,
    _release_gpu_memory,
    _set_current_job,
    _train_to_the_end,
    claimed,
    leave_share,
    process_redis,
    report_gpu_memory,
    run_job,
    worker_share,
)
from dnnq.workers.settings import WorkerSettings, get_settings
from dnnq.workers.shutdown import cooperative_sigterm, release_requested
from dnnq.workers.spec import JobSpec, SpecError, to_train_config
from dnnq.workers.sweeps import get_sweep

if TYPE_CHECKING:
    from dnnq.models import Checkpoint, TrainConfig

__all__ = ["PackHeartbeat", "pack_memory_bytes", "run_pack", "run_trial"]

# Whether Gram-path packs (fresh, or resumed at one epoch) train stacked (_train_stacked): on since the
# stacked step and the per-trial writes and scoring shrank (docs/perf.md, "Sweep pack overhead in the worker").
STACK_PACKS = True
# Stacking changes the order of some roundings: in float64 a trial stays within 1e-12 of its solo job
# over the course's 2,500 steps; in float32 the same reorderings grow past 1e-5 within a few hundred
# (as fit's own two paths do: docs/perf.md, "float32 packs"), so float32 packs run one trial after
# another, each bit for bit its solo job.
STACKED_DTYPES = ("float64",)


class _TrialLease:
    """One trial's lease as training sees it (runner.LeaseWatch): `lost` once renewal fails."""

    def __init__(self, job_id: str, token: str) -> None:
        self.job_id, self.token = job_id, token
        self.lost = threading.Event()


class PackHeartbeat(threading.Thread):
    """Renews every unfinished trial's lease each heartbeat_seconds, together; a trial whose renewal
    fails gets `lost` set (another worker may have it) and is renewed no more. A trial cancelled while it
    waits for its turn is finished 'cancelled' here at once (its outcome in `ended`): waiting for its turn
    could take hours, while it counted against its tenant's job limit and kept its dataset undeletable."""

    def __init__(
        self, r: redis.Redis, leases: list[_TrialLease], settings: WorkerSettings, share: jobs.Share | None = None
    ) -> None:
        super().__init__(name=f"pack-lease-{leases[0].job_id[:8]}", daemon=True)
        self.r, self.period, self.lease_ms = r, settings.heartbeat_seconds, settings.lease_ms
        self.share = share  # the process's share of its tenant's workers, renewed with the leases
        self._leases = {lease.job_id: lease for lease in leases}
        self._waiting = set(self._leases)  # not yet begun by the pack
        self.ended: dict[str, str | None] = {}  # waiting trials a cancel ended, with their outcome
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def begin(self, job_id: str) -> bool:
        """The pack takes this trial up (to train or to release it): False when a cancel ended it while it
        waited (its outcome is in `ended`)."""
        with self._lock:
            if job_id in self.ended:
                return False
            self._waiting.discard(job_id)
            return True

    def done(self, job_id: str) -> None:
        """The trial has ended (its finish dropped the lease): stop renewing it."""
        with self._lock:
            self._leases.pop(job_id, None)

    def run(self) -> None:
        while not self._halt.wait(self.period):
            with self._lock:
                held = list(self._leases.values())
            for lease in held:
                try:
                    if jobs.renew_lease(self.r, lease.job_id, lease.token, self.lease_ms):
                        continue
                    with self._lock:
                        if lease.job_id not in self._leases:  # finished meanwhile: its lease went with it
                            continue
                        self._leases.pop(lease.job_id)
                    lease.lost.set()
                    event("job.lease_lost", logging.WARNING, job_id=lease.job_id)
                except Exception as exc:  # Redis blip: keep trying until the lease itself runs out
                    event("job.lease_renew_error", logging.WARNING, job_id=lease.job_id, error=str(exc))
            if self.share is not None:
                try:
                    jobs.renew_share(self.r, self.share, self.lease_ms)
                except Exception as exc:  # Redis blip: the next round renews it
                    event("job.share_renew_error", logging.WARNING, tenant=self.share.tenant, error=str(exc))
            try:
                self._end_cancelled_waiting()
            except Exception as exc:  # the next round, or the trial's turn, sees the cancel
                event("pack.cancel_check_error", logging.WARNING, error=str(exc))

    def _end_cancelled_waiting(self) -> None:
        with self._lock:
            waiting = [self._leases[job_id] for job_id in self._waiting if job_id in self._leases]
        if not waiting:
            return
        pipe = self.r.pipeline(transaction=False)
        for lease in waiting:
            pipe.hget(keys.job(lease.job_id), "status")
        for lease, status in zip(waiting, pipe.execute(), strict=True):
            if status != jobs.Status.CANCELLING.value:
                continue
            with self._lock:  # begin() waits: the pack never starts a trial ended here
                if lease.job_id not in self._waiting:
                    continue  # begun meanwhile: its own reporter sees the cancel at its next epoch
                self._waiting.discard(lease.job_id)
                self._leases.pop(lease.job_id, None)
                done = jobs.finish(self.r, lease.job_id, lease.token, "cancelled")
                self.ended[lease.job_id] = "cancelled" if done else None
            event("pack.trial_cancelled_waiting", job_id=lease.job_id, finished=done)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def pack_memory_bytes(estimates: list[int], data_bytes: int, *, stacked: bool = False) -> int:
    """A pack's working memory from its trials' own estimates (each TrainConfig.estimate_memory_bytes,
    its data included): one copy of the data, plus the trials' other memory summed when they train as one
    stacked computation, else the largest (one trial at a time)."""
    rest = [max(0, e - data_bytes) for e in estimates]
    return data_bytes + (sum(rest) if stacked else max(rest, default=0))


def run_trial(
    job_id: str,
    *,
    settings: WorkerSettings | None = None,
    r: redis.Redis | None = None,
    store: ArtifactStore | None = None,
    celery_task_id: str | None = None,
) -> str | None:
    """The dnnq.train task's entry: a sweep trial trains with its pack (run_pack), any other job alone
    (runner.run_job). Returns job_id's outcome as run_job does."""
    settings = settings or get_settings()
    r = r if r is not None else process_redis(settings)
    key = record_key(job_id)
    fields = r.hmget(key, ["sweep_id", "sweep_pack"]) if key is not None else [None, None]
    if not fields[0] or not fields[1]:
        return run_job(job_id, settings=settings, r=r, store=store, celery_task_id=celery_task_id)
    outcomes = run_pack(job_id, settings=settings, r=r, store=store, celery_task_id=celery_task_id)
    return outcomes.get(job_id)


def run_pack(
    job_id: str,
    *,
    settings: WorkerSettings | None = None,
    r: redis.Redis | None = None,
    store: ArtifactStore | None = None,
    celery_task_id: str | None = None,
) -> dict[str, str | None]:
    """Claim sweep trial job_id and its pack's queued siblings, train them, return each claimed trial's
    outcome (as run_job's). Empty when job_id itself could not be claimed."""
    settings = settings or get_settings()
    r = r if r is not None else process_redis(settings)
    store = store if store is not None else open_store(settings)
    leases = [_TrialLease(job_id, _token(settings))]
    share = worker_share(r, settings, job_id)
    if not claimed(r, job_id, leases[0].token, settings, share, celery_task_id):
        return {}
    try:
        return _claimed_pack(r, store, settings, leases, share)
    finally:
        leave_share(r, share)


def _claimed_pack(
    r: redis.Redis, store: ArtifactStore, settings: WorkerSettings, leases: list[_TrialLease], share: jobs.Share | None
) -> dict[str, str | None]:
    """run_pack once its first trial is claimed: claim the siblings, train them all."""
    job_id = leases[0].job_id
    t_claimed = time.perf_counter()
    try:
        for sibling in _siblings_that_fit(r, job_id, settings):
            lease = _TrialLease(sibling, _token(settings))
            # the process already counts against its tenant's cap, so a sibling (same tenant) is never deferred
            outcome = jobs.claim_within_share(r, sibling, lease.token, settings.lease_ms, share)
            if outcome is jobs.ClaimOutcome.CLAIMED:
                leases.append(lease)
    except Exception as exc:  # the pack is an optimisation: the claimed trial trains whatever went wrong here
        event("pack.siblings_unread", logging.WARNING, job_id=job_id, error=str(exc))
    heartbeat = PackHeartbeat(r, leases, settings, share)
    heartbeat.start()
    ids = [lease.job_id for lease in leases]
    event("pack.claimed", job_id=job_id, pack_size=len(ids), trials=ids)
    _set_current_job(r, settings, job_id)
    try:
        with cooperative_sigterm():
            return _train_pack(r, store, settings, leases, heartbeat, t_claimed)
    finally:
        heartbeat.stop()
        _set_current_job(r, settings, "")


def _token(settings: WorkerSettings) -> str:
    return f"{settings.worker_name}:{os.getpid()}:{uuid.uuid4().hex}"


def _siblings_that_fit(r: redis.Redis, job_id: str, settings: WorkerSettings) -> list[str]:
    """job_id's pack's other trials still queued, in trial order, as many as the worker's memory holds
    beside job_id (the pack's estimate checked as the API checks one job's: the trials' memory summed
    when the pack may train stacked, see _may_stack)."""
    job = jobs.get_job(r, job_id)
    sweep = get_sweep(r, job["sweep_id"]) if job and job.get("sweep_id") else None
    if job is None or sweep is None:
        return []
    indexes = (sweep.get("packs") or {}).get(job.get("sweep_pack") or "", [])
    candidates = [sweep["job_ids"][i] for i in indexes if sweep["job_ids"][i] != job_id]
    records = {c: jobs.get_job(r, c) for c in candidates}
    queued = [c for c in candidates if (records[c] or {}).get("status") == jobs.Status.QUEUED.value]
    if not queued:
        return []
    capacity = settings.worker_memory_bytes or host_memory_bytes()
    if capacity is None:
        return queued
    n_examples, data = _data_bytes(r, job)
    config = _config(r, job)
    stacked = config is not None and _may_stack(config, settings)
    estimates = [_estimate(config, n_examples)]
    chosen = []
    for c in queued:
        est = _estimate(_config(r, records[c] or {}), n_examples)
        if pack_memory_bytes([*estimates, est], data, stacked=stacked) > capacity:
            event("pack.memory_full", job_id=job_id, left_out=c, capacity=capacity, stacked=stacked)
            continue
        estimates.append(est)
        chosen.append(c)
    return chosen


def _data_bytes(r: redis.Redis, job: dict[str, Any]) -> tuple[int, int]:
    from dnnq.workers.datasets import get_dataset

    spec = JobSpec.model_validate(job["spec"])
    meta = get_dataset(r, spec.dataset_id) or {}
    n, n_x = int(meta.get("n_examples") or 0), int(meta.get("n_features") or 0)
    item = 4 if spec.training.dtype == "float32" else 8
    return n, n * (n_x + 1) * item


def _config(r: redis.Redis, job: dict[str, Any]) -> tuple[TrainConfig, int, int] | None:
    """The trial's TrainConfig with its training and validation example counts (None when its spec no
    longer reads: it fails alone later)."""
    from dnnq.workers.datasets import get_dataset

    try:
        spec = JobSpec.model_validate(job["spec"])
        meta = get_dataset(r, spec.dataset_id)
        if meta is None:
            return None
        val = get_dataset(r, spec.validation_dataset_id) if spec.validation_dataset_id else None
        m_val = int(val.get("n_examples") or 0) if val else 0
        return to_train_config(spec, meta, val), int(meta.get("n_examples") or 0), m_val
    except (SpecError, ValueError, KeyError):
        return None


def _estimate(config: tuple[TrainConfig, int, int] | None, n_examples: int) -> int:
    """The trial's TrainConfig.estimate_memory_bytes, its validation set included (0 when its spec no
    longer reads)."""
    return 0 if config is None else config[0].estimate_memory_bytes(n_examples, config[2])


def _stack_allowed(cfg: TrainConfig) -> bool:
    """What stacking needs beyond the Gram path: STACK_PACKS on, a hidden layer, a stacked dtype."""
    return STACK_PACKS and len(cfg.layer_dims) >= 3 and cfg.dtype in STACKED_DTYPES


def _may_stack(config: tuple[TrainConfig, int, int], settings: WorkerSettings) -> bool:
    """Whether a pack of this trial's config may train stacked (_stackable decides once claimed: STACK_PACKS
    on, fit's Gram path for it, two or more layers): then its memory is the trials' summed."""
    from dnnq.models.gram import plan

    cfg, m, m_val = config
    if not _stack_allowed(cfg):
        return False
    try:
        return plan(cfg, m, m_val, settings.fit_path, resuming=False).use
    except ValueError:
        return False


class _SharedInputs:
    """Loads the pack's data once: the first trial through load_inputs, each other trial as its own
    record, spec and config over the same (read-only) arrays. A trial whose inputs fail (a dataset
    deleted meanwhile) fails alone; the next one tries again."""

    def __init__(self) -> None:
        self.first: JobInputs | None = None

    def __call__(self, r: redis.Redis, store: ArtifactStore, job_id: str) -> JobInputs:
        if self.first is None:
            inputs = load_inputs(r, store, job_id)
            for a in (inputs.X, inputs.Y, inputs.X_val, inputs.Y_val):
                if a is not None:
                    a.flags.writeable = False  # shared by every trial: nothing may change them
            self.first = inputs
            return inputs
        job = jobs.get_job(r, job_id)
        if job is None:
            raise SpecError("id", f"job '{job_id}' no longer exists.")
        spec = JobSpec.model_validate(job["spec"])
        first = self.first
        if (spec.dataset_id, spec.validation_dataset_id) != (first.spec.dataset_id, first.spec.validation_dataset_id):
            return load_inputs(r, store, job_id)  # not the same data after all (pack ids say it is)
        cfg = to_train_config(spec, first.meta, first.val_meta)
        return replace(first, record=job, spec=spec, cfg=cfg)


def _train_pack(
    r: redis.Redis,
    store: ArtifactStore,
    settings: WorkerSettings,
    leases: list[_TrialLease],
    heartbeat: PackHeartbeat,
    t_claimed: float,
) -> dict[str, str | None]:
    """Each claimed trial in turn through runner's path, on the shared inputs; the trials still waiting
    are released when the worker is asked to shut down."""
    from dnnq.models.gram import SharedGram

    # Celery's time limit (DNNQ_MAX_JOB_SECONDS) is the task's, and the task trains every trial of the pack:
    # a later trial must not be failed "ran past DNNQ_MAX_JOB_SECONDS" (nor killed at the hard limit with the
    # trials still waiting) for the time its siblings used. Near the limit it goes back to the queue at its
    # epoch's end (checkpoint kept, attempt not spent) with those waiting, to resume in a task of its own.
    # In a stacked pack every trial but the first does so; the first keeps the whole limit, as a solo job.
    deadline = t_claimed + settings.max_job_seconds - min(60.0, settings.max_job_seconds / 10)

    def task_time_nearly_spent() -> bool:
        return time.perf_counter() >= deadline

    def hand_back() -> bool:
        return release_requested() or task_time_nearly_spent()

    load = _SharedInputs()
    stacked = _stackable(r, store, settings, leases, load)
    if stacked is not None:
        return _train_stacked(r, store, settings, stacked, heartbeat, hand_back)
    gram_cache = SharedGram()  # X X^T (and X X_val^T) computed by the first trial's fit, reused by the others
    outcomes: dict[str, str | None] = {}
    size = len(leases)

    for i, lease in enumerate(leases):
        if release_requested() or (i > 0 and task_time_nearly_spent()):
            for waiting in leases[i:]:
                if not heartbeat.begin(waiting.job_id):  # cancelled while it waited: ended already
                    outcomes[waiting.job_id] = heartbeat.ended[waiting.job_id]
                    continue
                outcomes[waiting.job_id] = _release_waiting(r, settings, waiting)
                heartbeat.done(waiting.job_id)
            break
        if not heartbeat.begin(lease.job_id):  # cancelled while it waited: ended already
            outcomes[lease.job_id] = heartbeat.ended[lease.job_id]
            continue
        pack = {"pack_size": float(size), "pack_wait_s": round(time.perf_counter() - t_claimed, 4)}
        # the first trial has the whole task's time: past it, it did run past the limit and fails
        check = hand_back if i > 0 else None
        claim = _Claim(r, store, settings, lease.job_id, lease.token, lease, pack, gram_cache, check)
        if lease.lost.is_set():
            outcomes[lease.job_id] = None
            continue
        _set_current_job(r, settings, lease.job_id)
        if r.hget(keys.job(lease.job_id), "status") == jobs.Status.CANCELLING.value:  # cancelled while waiting
            outcome: str | None = "cancelled" if jobs.finish(r, lease.job_id, lease.token, "cancelled") else None
        else:
            outcome = _train_to_the_end(claim, load)
        outcomes[lease.job_id] = outcome
        heartbeat.done(lease.job_id)
        event("pack.trial_done", job_id=lease.job_id, outcome=outcome, position=i + 1, pack_size=size)
    load.first = None  # the arrays go with the pack
    gram_cache.clear()
    return outcomes


def _release_waiting(r: redis.Redis, settings: WorkerSettings, lease: _TrialLease) -> str | None:
    """A trial the pack has not started: back to queued (its attempt kept) with its message sent again,
    or, cancelled meanwhile, finished 'cancelled'."""
    queue = r.hget(keys.job(lease.job_id), "queue") or "default"
    outcome = _release(r, settings, lease.job_id, lease.token, str(queue), 0)
    if outcome == jobs.Status.CANCELLING.value:
        done = jobs.finish(r, lease.job_id, lease.token, "cancelled")
        return "cancelled" if done else None
    return outcome


def _stackable(
    r: redis.Redis, store: ArtifactStore, settings: WorkerSettings, leases: list[_TrialLease], load: _SharedInputs
) -> list[tuple[_TrialLease, JobInputs, Checkpoint | None]] | None:
    """The pack's trials with their inputs and checkpoints when they can train as one stacked Gram-path
    computation (models.packed.fit_packed(path="gram")): two or more, not cancelled, lease held, on the
    same arrays, one pack key, fit would take the Gram path for each (as it would resuming), and either
    every one fresh, or every one resumed from a checkpoint at the same epoch with gd. None: train them
    one after another (fresh and resumed mixed, checkpoints at different epochs, resumed momentum, Adam,
    narrow inputs, float32, ...)."""
    from dnnq.models.gram import plan
    from dnnq.models.packed import pack_key

    if not STACK_PACKS or len(leases) < 2 or release_requested():
        return None
    try:
        chosen = []
        for lease in leases:
            if lease.lost.is_set() or r.hget(keys.job(lease.job_id), "status") != jobs.Status.RUNNING.value:
                return None
            ckpt = artifacts.load_checkpoint(store, lease.job_id)
            chosen.append((lease, load(r, store, lease.job_id), ckpt))
    except Exception as exc:  # a trial whose inputs fail fails alone on the sequential path
        event("pack.not_stacked", job_id=leases[0].job_id, reason=str(exc))
        return None
    # fit_packed resumes gd trials at one epoch only: a resumed momentum's velocity is a start block of its own
    epochs = {None if ckpt is None else ckpt.epoch for _, _, ckpt in chosen}
    if len(epochs) > 1 or (None not in epochs and chosen[0][1].cfg.optimizer != "gd"):
        return None
    first = chosen[0][1]
    m, m_val = int(first.X.shape[1]), 0 if first.X_val is None else int(first.X_val.shape[1])
    for _, inputs, ckpt in chosen:
        if inputs.X is not first.X or inputs.X_val is not first.X_val or pack_key(inputs.cfg) != pack_key(first.cfg):
            return None
        resuming, cfg = ckpt is not None, inputs.cfg
        epochs_left = cfg.epochs - (ckpt.epoch if ckpt is not None else 0)  # as fit plans a resumed run
        if not _stack_allowed(cfg) or not plan(cfg, m, m_val, settings.fit_path, resuming, epochs_left).use:
            return None
    return chosen


def _train_stacked(
    r: redis.Redis,
    store: ArtifactStore,
    settings: WorkerSettings,
    trials: list[tuple[_TrialLease, JobInputs, Checkpoint | None]],
    heartbeat: PackHeartbeat,
    hand_back: Callable[[], bool],
) -> dict[str, str | None]:
    """The pack's trials (all fresh, or all resumed at one epoch) as one stacked computation: each keeps
    its own EpochReporter (history, progress, checkpoints, cancel: a trial that stops leaves the stack),
    and ends through runner's own outcome path (scoring, weights, finish) or fails alone when it diverges.
    ``hand_back``: whether the trials after the first go back to the queue (shutdown, or the task's time
    nearly spent)."""
    from dnnq.models.packed import fit_packed

    t0 = time.perf_counter()
    size = float(len(trials))
    outcomes: dict[str, str | None] = {}
    live: list[tuple[_Claim, JobInputs, EpochReporter]] = []
    ckpts: list[Checkpoint | None] = []
    group = FlushGroup(r, settings)  # the trials' progress writes due by time: one round trip for all
    # A hand-back (shutdown, or the time limit near) is decided once an epoch for the whole stack, so that
    # its trials stop at one epoch and resume stacked together (fit_packed resumes trials at one epoch only).
    decided: dict[str, Any] = {"epoch": -1, "stop": False, "back": False}

    def on_state(i: int, state: Any) -> None:
        if state.epoch != decided["epoch"]:
            stop = release_requested()
            decided.update(epoch=state.epoch, stop=stop, back=stop or hand_back())
        live[i][2].on_epoch(state)

    for lease, inputs, ckpt in trials:
        if not heartbeat.begin(lease.job_id):  # cancelled since the pack was formed: ended already
            outcomes[lease.job_id] = heartbeat.ended[lease.job_id]
            continue
        pack = {"pack_size": size, "pack_wait_s": 0.0, "pack_stacked": 1.0}
        claim = _Claim(r, store, settings, lease.job_id, lease.token, lease, pack)
        resume_epoch = ckpt.epoch if ckpt is not None else 0
        if not _record_start(claim, inputs, resume_epoch, resumed=ckpt is not None):
            outcomes[lease.job_id] = None
            heartbeat.done(lease.job_id)
            continue
        reporter = EpochReporter(
            r,
            store,
            settings,
            lease.job_id,
            lease.token,
            resume_epoch=resume_epoch,
            checkpoint_every=inputs.spec.training.checkpoint_every or settings.checkpoint_every,
            lease_lost=lease.lost,
            release_requested=(lambda: decided["back"]) if live else (lambda: decided["stop"]),
            report_gpu=lambda: report_gpu_memory(r, settings),
            group=group,
        )
        live.append((claim, inputs, reporter))
        ckpts.append(ckpt)
    if not live:
        return outcomes
    resumed = None if ckpts[0] is None else [c for c in ckpts if c is not None]  # all or none (_stackable)
    first = live[0][1]
    t_loaded = time.perf_counter()
    results: list[Any]
    try:
        results = fit_packed(
            first.X,
            first.Y,
            [inputs.cfg for _, inputs, _ in live],
            X_val=first.X_val,
            Y_val=first.Y_val,
            on_state=on_state,
            should_stop=lambda i: live[i][2].should_stop(),
            path="gram",
            checkpoints=resumed,
        )
    except (KeyboardInterrupt, SystemExit):
        event("pack.interrupted", logging.WARNING, job_id=live[0][0].job_id)  # leases expire, checkpoints resume
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        event("job.redis_unreachable", logging.WARNING, job_id=live[0][0].job_id, error=str(exc))
        return {**outcomes, **{claim.job_id: None for claim, _, _ in live}}
    except Exception as exc:  # the whole pack failed (memory, a device): each trial fails with the reason
        results = [exc for _ in live]
    finally:
        for _, _, reporter in live:
            reporter.flush_remaining()
        r.hincrbyfloat(keys.STATS, "training_seconds_total", time.perf_counter() - t_loaded)
    rows = _pack_rows(store, first, results)
    for (claim, inputs, reporter), result in zip(live, results, strict=True):
        _set_current_job(r, settings, claim.job_id)
        outcomes[claim.job_id] = _failing_alone(
            claim, partial(_stacked_outcome, claim, inputs, reporter, result, t0, rows)
        )
        heartbeat.done(claim.job_id)
        event("pack.trial_done", job_id=claim.job_id, outcome=outcomes[claim.job_id], stacked=True, pack_size=size)
    if live:
        _release_gpu_memory(live[0][0])
    return outcomes


def _pack_rows(
    store: ArtifactStore, first: JobInputs, results: list[Any]
) -> tuple[ScoringRows | None, ScoringRows | None]:
    """The pack's training and validation rows for scoring, read once for all its trials (None: not
    needed, or the read failed: each trial then reads them itself, and fails alone if that fails)."""
    if first.spec.model.output == "linear" or all(isinstance(result, BaseException) for result in results):
        return None, None
    try:
        train = scoring_rows(store, first.spec, first.meta)
        val = scoring_rows(store, first.spec, first.val_meta) if first.val_meta else None
    except Exception as exc:
        event("pack.scoring_rows_unread", logging.WARNING, job_id=first.record["id"], error=str(exc))
        return None, None
    return train, val


def _stacked_outcome(
    claim: _Claim,
    inputs: JobInputs,
    reporter: EpochReporter,
    result: Any,
    t0: float,
    rows: tuple[ScoringRows | None, ScoringRows | None] = (None, None),
) -> str | None:
    """One stacked trial's end, as runner._train and _train_to_the_end record a solo job's (``rows``:
    the pack's rows for scoring, read once)."""
    r, job_id = claim.r, claim.job_id
    if isinstance(result, BaseException) and not (reporter.releasing and not reporter.cancelled):
        expected = _expected_errors()
        message = _readable(result, expected)
        event("job.failed", logging.ERROR, job_id=job_id, error=message, stacked=True)
        if reporter.lease_is_lost or not jobs.finish(
            r, job_id, claim.token, "failed", error=message, store=claim.store
        ):
            return None
        return "failed"
    if reporter.lease_is_lost:
        event("job.abandoned", logging.WARNING, job_id=job_id, reason="lease lost", epochs=reporter.last_epoch)
        return None
    # handed back, its checkpoint written, before the stack ended (the exception a sibling's, later)
    if (isinstance(result, BaseException) or result.stopped) and reporter.releasing and not reporter.cancelled:
        queue = inputs.record.get("queue") or "default"
        outcome = _release(r, claim.settings, job_id, claim.token, queue, reporter.last_epoch)
        if outcome != jobs.Status.CANCELLING.value:
            return outcome
        if isinstance(result, BaseException):  # cancelled as it was handed back: no result to record
            return "cancelled" if jobs.finish(r, job_id, claim.token, "cancelled") else None
    timings = {"load_s": 0.0, **{k: round(v, 4) for k, v in result.timings.items()}}
    timings.update(claim.pack or {})
    return _record_outcome(claim, inputs, result, timings, t0, rows)
