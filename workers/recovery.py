"""Lease sweeper and worker registration, run in a daemon thread of the worker's MAIN process.

Every heartbeat the thread refreshes dnnq:worker:{name} (TTL 3 x heartbeat, read by /readyz and
/metrics); every LEASE_SECONDS/2 it sweeps: jobs whose worker died (lease expired) go back to
'queued' and their task is sent again. Any number of workers may sweep at once: requeue_expired
is one atomic script, so each expired job is requeued (and re-sent) by exactly one of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from dnnq.workers import jobs
from dnnq.workers.logs import event
from dnnq.workers.settings import WorkerSettings

__all__ = [
    "WORKERS_KEY",
    "Maintenance",
    "celery_sender",
    "host_memory_bytes",
    "live_workers",
    "live_workers_async",
    "load_scripts_async",
    "register_worker",
    "sweep",
    "unregister_worker",
    "worker_key",
]

Send = Callable[[str, str], None]  # send(job_id, queue)


def sweep(r, send: Send, max_attempts: int | None = None) -> list[str]:
    """Requeue jobs whose lease expired, then send every queued job whose message may not be out
    (the requeued ones, and any the API or an earlier sweep crashed before sending); returns the
    requeued ids. Jobs that already started max_attempts times are failed instead (see
    jobs.requeue_expired)."""
    requeued = jobs.requeue_expired(r, max_attempts)
    for job_id in requeued:
        event("job.requeued", logging.WARNING, job_id=job_id, reason="lease expired")
    for job_id in jobs.unsent(r):
        job = jobs.get_job(r, job_id)
        if job is not None and job["status"] == jobs.Status.QUEUED.value:
            send(job_id, job.get("queue") or "default")
            event("job.sent", job_id=job_id, queue=job.get("queue"), by="sweeper")
        jobs.mark_sent(r, job_id)  # after send: a crash in between only means one more (harmless) message
    return requeued


def celery_sender(app) -> Send:
    def send(job_id: str, queue: str) -> None:
        app.send_task("dnnq.train", args=[job_id], queue=queue)

    return send


def worker_key(name: str) -> str:
    return f"dnnq:worker:{name}"


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


# Names of registered workers. The index only lists candidates: a worker is alive while its hash
# (TTL 3 x heartbeat) exists, so no clocks are compared across hosts. Readers prune dead names.
WORKERS_KEY = "dnnq:workers"


# KEYS: the index ; ARGV: the prefix of a worker's hash. Returns each live worker's HGETALL as a flat
# list and drops dead names from the index: one round trip, however many workers.
_LIVE_WORKERS = """
local live = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. name)
  if #fields > 0 then table.insert(live, fields) else redis.call('SREM', KEYS[1], name) end
end
return live
"""
_SCRIPTS: dict[str, object] = {}


def _pairs(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def _by_name(found: list) -> list[dict]:
    return sorted((_pairs(flat) for flat in found), key=lambda w: w.get("name", ""))


def live_workers(r) -> list[dict]:
    """The hashes of every worker whose heartbeat has not expired, by name: O(workers), not a keyspace
    SCAN (the submit route calls this for its memory check, and the keyspace grows with every job)."""
    script = _SCRIPTS.get("sync") or _SCRIPTS.setdefault("sync", r.register_script(_LIVE_WORKERS))
    return _by_name(script(keys=[WORKERS_KEY], args=[worker_key("")], client=r))


async def live_workers_async(ar) -> list[dict]:
    """live_workers on a redis.asyncio client (the submit route)."""
    script = _SCRIPTS.get("async") or _SCRIPTS.setdefault("async", ar.register_script(_LIVE_WORKERS))
    return _by_name(await script(keys=[WORKERS_KEY], args=[worker_key("")], client=ar))


async def load_scripts_async(ar) -> None:
    """Load live_workers' script into Redis's script cache ahead of the submit route (see
    jobs.load_scripts_async)."""
    await ar.script_load(_LIVE_WORKERS)


def register_worker(r, settings: WorkerSettings, started_at: str) -> None:
    """Create or refresh dnnq:worker:{name}; current_job and gpu memory are the training child's to set."""
    key = worker_key(settings.worker_name)
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
    pipe.sadd(WORKERS_KEY, settings.worker_name)
    pipe.execute()


def unregister_worker(r, settings: WorkerSettings) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(worker_key(settings.worker_name))
    pipe.srem(WORKERS_KEY, settings.worker_name)
    pipe.execute()


class Maintenance(threading.Thread):
    """Worker registration every heartbeat, lease sweep every lease/2."""

    def __init__(self, r, settings: WorkerSettings, send: Send):
        super().__init__(name="dnnq-maintenance", daemon=True)
        self.r, self.settings, self.send = r, settings, send
        self.started_at = jobs.now_iso()
        self._halt = threading.Event()

    def run(self) -> None:
        sweep_every = self.settings.lease_seconds / 2
        next_sweep = 0.0
        while True:
            try:
                register_worker(self.r, self.settings, self.started_at)
                if time.monotonic() >= next_sweep:
                    sweep(self.r, self.send, self.settings.max_attempts)
                    next_sweep = time.monotonic() + sweep_every
            except Exception as exc:  # Redis down for a moment: log, keep the thread alive
                event("worker.maintenance_error", logging.WARNING, error=str(exc))
            if self._halt.wait(self.settings.heartbeat_seconds):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        try:
            unregister_worker(self.r, self.settings)
        except Exception:
            pass
