"""Lease sweeper and worker registration, run in a daemon thread of the worker's MAIN process.

Every heartbeat the thread refreshes dnnq:worker:{name} (TTL 3 x heartbeat, read by /readyz and
/metrics); every LEASE_SECONDS/2 it sweeps: jobs whose worker died (lease expired) go back to
'queued' and their task is sent again, and so is any job whose sender (the API, a worker releasing
it) did not mark it sent within SEND_GRACE_SECONDS. Any number of workers may sweep at once:
requeue_expired is one atomic script, so each expired job is requeued by exactly one of them, and a
job sent twice is claimed once.

Each sweep also looks after ended jobs (housekeeping): long histories that are still in Redis move to
the artifact store, files of deleted jobs and datasets that a crash left are removed, and with
DNNQ_RETENTION_DAYS, jobs that ended longer ago than that are deleted as DELETE /v1/jobs/{id} does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnnq.workers import jobs, keys, trash
from dnnq.workers.artifact_store import ArtifactStore, open_store
from dnnq.workers.dataset_cache import DatasetCache
from dnnq.workers.logs import event
from dnnq.workers.scripts import get as script
from dnnq.workers.settings import WorkerSettings

__all__ = [
    "SEND_GRACE_SECONDS",
    "Maintenance",
    "Send",
    "celery_sender",
    "forget_deleted_datasets",
    "host_memory_bytes",
    "housekeeping",
    "live_workers",
    "live_workers_async",
    "load_scripts_async",
    "register_worker",
    "sweep",
    "unregister_worker",
]

Send = Callable[[str, str, bool], None]  # send(job_id, queue, resumed: the job trained before)

# How long a job may stay in the outbox before a sweep sends it: its sender normally marks it sent
# within milliseconds, and a sweep sending it as well would only put a second message in the queue.
SEND_GRACE_SECONDS = 10.0


def sweep(r: Any, send: Send, max_attempts: int | None = None, grace_seconds: float = SEND_GRACE_SECONDS) -> list[str]:
    """Requeue jobs whose lease expired and send them, then send every queued job left in the outbox
    for grace_seconds (its sender died between writing the job and sending it), and every job a claim
    deferred that long ago (its tenant had DNNQ_MAX_WORKERS_PER_TENANT workers); returns the requeued
    ids. Jobs that already started max_attempts times are failed instead (see jobs.requeue_expired)."""
    requeued = jobs.requeue_expired(r, max_attempts)
    for job_id in requeued:
        event("job.requeued", logging.WARNING, job_id=job_id, reason="lease expired")
    for job_id in dict.fromkeys([*requeued, *jobs.unsent(r, grace_seconds)]):
        job = jobs.get_job(r, job_id)
        if job is not None and job["status"] == jobs.Status.QUEUED.value:
            send(job_id, job.get("queue") or "default", bool(job.get("attempts")))
            event("job.sent", job_id=job_id, queue=job.get("queue"), by="sweeper")
        jobs.mark_sent(r, job_id)  # after send: a crash in between only means one more (harmless) message
    for job_id, score in jobs.deferred_due(r, grace_seconds):
        job = jobs.get_job(r, job_id)
        if job is not None and job["status"] == jobs.Status.QUEUED.value:
            send(job_id, job.get("queue") or "default", bool(job.get("attempts")))
            event("job.sent", job_id=job_id, queue=job.get("queue"), by="sweeper", deferred=True)
        jobs.unlist_deferred(r, job_id, score)
    return requeued


def housekeeping(r: Any, store: ArtifactStore, retention_seconds: float = 0.0, limit: int = 100) -> dict[str, int]:
    """Ended jobs' care, a bounded amount per sweep: move up to `limit` long histories still in Redis to
    the store, remove deleted jobs' and datasets' leftover files, and delete up to `limit` jobs that ended
    at least retention_seconds ago (0: none). Returns how many of each."""
    moved = expired = 0
    for job_id in jobs.pending_history_moves(r, limit):
        try:
            if jobs.move_history(r, store, job_id) == "moved":
                moved += 1
        except Exception as exc:  # the store is down: the history stays in Redis, the next sweep retries
            event("job.history_move_failed", logging.WARNING, job_id=job_id, error=str(exc))
    removed = trash.empty(r, store, limit)
    if retention_seconds > 0:
        for job_id in jobs.finished_before(r, retention_seconds, limit):
            with contextlib.suppress(jobs.JobNotFound):  # deleted meanwhile (by a client, another sweeper)
                jobs.delete_job(r, store, job_id)
                expired += 1
                event("job.expired", job_id=job_id, retention_seconds=retention_seconds)
    return {"histories_moved": moved, "trash_removed": removed, "jobs_expired": expired}


def forget_deleted_datasets(r: Any, cache: DatasetCache) -> int:
    """Drop this host's cached copies of datasets that were deleted (an object store's local cache: the
    API that deleted them cannot reach it); how many entries went."""
    if not cache.root.is_dir():
        return 0
    cached = [
        key
        for key in cache.cached_keys()
        if key.startswith("datasets/") and key.endswith(".npz") and keys.ID_RE.match(key[len("datasets/") : -4])
    ]
    ids = [key[len("datasets/") : -len(".npz")] for key in cached]
    pipe = r.pipeline(transaction=False)
    for dataset_id in ids:
        pipe.exists(keys.dataset(dataset_id))
    return sum(cache.drop(key) for key, alive in zip(cached, pipe.execute(), strict=True) if not alive)


def celery_sender(celery: Any) -> Send:
    """send(job_id, queue) through the Celery app `celery` (the worker's)."""
    from dnnq.workers.celery_app import send_train

    def send(job_id: str, queue: str, resumed: bool) -> None:
        send_train(job_id, queue, celery, resumed=resumed)

    return send


def worker_device(settings: WorkerSettings) -> str:
    """What this worker trains on, said without touching CUDA (the main process never does)."""
    if "gpu" not in settings.queue_list:
        return "cpu"
    visible = settings.cuda_visible_devices or os.environ.get("CUDA_VISIBLE_DEVICES") or "0"
    return f"gpu:{visible.split(',')[0]}"


def host_memory_bytes() -> int | None:
    """Physical memory of this host, the capacity the API checks a job's memory estimate against."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX, or not reported
        return None


def _pairs(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=True))  # HGETALL: name, value, ...


def _by_name(found: list) -> list[dict]:
    return sorted((_pairs(flat) for flat in found), key=lambda w: w.get("name", ""))


# The index keys.WORKERS only lists candidates: a worker is alive while its hash (TTL 3 x heartbeat)
# exists, so no clocks are compared across hosts. live_workers.lua prunes dead names as it reads.
_LIVE_KEYS, _LIVE_ARGS = [keys.WORKERS], [keys.worker("")]


def live_workers(r: Any) -> list[dict]:
    """The hashes of every worker whose heartbeat has not expired, by name: O(workers), not a keyspace
    SCAN (the submit route calls this for its memory check, and the keyspace grows with every job)."""
    return _by_name(script("live_workers")(r, _LIVE_KEYS, _LIVE_ARGS))


async def live_workers_async(ar: Any) -> list[dict]:
    """live_workers on a redis.asyncio client (the submit route)."""
    return _by_name(await script("live_workers").run_async(ar, _LIVE_KEYS, _LIVE_ARGS))


async def load_scripts_async(ar: Any) -> None:
    """Load live_workers' script into Redis's script cache ahead of the submit route (see
    jobs.load_scripts_async)."""
    await script("live_workers").load_async(ar)


def register_worker(r: Any, settings: WorkerSettings, started_at: str) -> None:
    """Create or refresh dnnq:worker:{name}; current_job and gpu memory are the training child's to set."""
    key = keys.worker(settings.worker_name)
    assert settings.heartbeat_seconds is not None  # WorkerSettings' validator sets it (default lease / 4)
    pipe = r.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "name": settings.worker_name,
            "queues": ",".join(settings.queue_list),
            "device": worker_device(settings),
            "pid": os.getpid(),
            "started_at": started_at,
            "memory_bytes": host_memory_bytes() or "",
        },
    )
    pipe.hsetnx(key, "current_job", "")
    pipe.hsetnx(key, "gpu_memory_used", "")
    pipe.hsetnx(key, "gpu_memory_total", "")
    pipe.pexpire(key, int(3 * settings.heartbeat_seconds * 1000))
    pipe.sadd(keys.WORKERS, settings.worker_name)
    pipe.execute()


def unregister_worker(r: Any, settings: WorkerSettings) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.worker(settings.worker_name))
    pipe.srem(keys.WORKERS, settings.worker_name)
    pipe.execute()


class Maintenance(threading.Thread):
    """Worker registration every heartbeat, lease sweep every lease/2."""

    def __init__(self, r: Any, settings: WorkerSettings, send: Send) -> None:
        super().__init__(name="dnnq-maintenance", daemon=True)
        self.r, self.settings, self.send = r, settings, send
        self.started_at = jobs.now_iso()
        self._halt = threading.Event()
        self._store: ArtifactStore | None = None
        # an object store's dataset cache on this host (ObjectArtifactStore's scratch is DNNQ_DATA_DIR)
        self._dataset_cache = (
            DatasetCache(Path(settings.data_dir) / "cache" / "datasets", settings.dataset_cache_bytes)
            if settings.artifacts_url
            else None
        )

    def run(self) -> None:
        sweep_every = self.settings.lease_seconds / 2
        # A job left unsent goes out with the first sweep past the grace (sooner with a short lease).
        grace = min(SEND_GRACE_SECONDS, sweep_every)
        next_sweep = 0.0
        while True:
            try:
                register_worker(self.r, self.settings, self.started_at)
                if time.monotonic() >= next_sweep:
                    sweep(self.r, self.send, self.settings.max_attempts, grace)
                    next_sweep = time.monotonic() + sweep_every
                    if self._store is None:
                        self._store = open_store(self.settings)
                    housekeeping(self.r, self._store, self.settings.retention_days * 86400)
                    if self._dataset_cache is not None:
                        forget_deleted_datasets(self.r, self._dataset_cache)
            except Exception as exc:  # Redis down for a moment: log, keep the thread alive
                event("worker.maintenance_error", logging.WARNING, error=str(exc))
            if self._halt.wait(self.settings.heartbeat_seconds):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        with contextlib.suppress(Exception):  # Redis gone: the hash expires by itself
            unregister_worker(self.r, self.settings)
