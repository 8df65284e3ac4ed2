"""THE job state machine: the only writer of dnnq:job:* records.

Every transition is one Lua script (workers/lua/), so it is atomic: a refused transition writes nothing.

    queued -> running            claim (sets lease; attempts += 1)
    queued -> cancelled          cancel before start
    running -> succeeded | failed
    running -> cancelling        cancel request; the worker stops at the next epoch boundary
    cancelling -> cancelled | succeeded | failed
    running -> queued            sweeper: lease expired (worker died)
    running -> queued            release: the worker is shutting down (the attempt is not spent)
    running -> failed            sweeper: lease expired and the job already started max_attempts times
    cancelling -> cancelled      sweeper: lease expired while cancelling

Writes made on behalf of a worker (progress, history, finish) carry the worker's lease token and
are refused when the token no longer matches (fencing: a worker that lost its lease writes nothing).

The outbox (keys.OUTBOX): every step that makes a job queued (create, release, the sweeper's requeue)
lists it there; whoever then sends its Celery message marks it sent (mark_sent), and the sweeper sends
what stays listed too long (workers/recovery.py). A crash between the two loses no job, and a second
message is harmless: claim is atomic.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from dnnq.workers import keys
from dnnq.workers.job_reads import (
    count_by_status,
    count_unfinished,
    decode,
    get_history,
    get_history_async,
    get_job,
    get_job_async,
    list_jobs,
    queue_depth,
    record_key,
)
from dnnq.workers.keys import ID_RE, InvalidId, validate_id
from dnnq.workers.scripts import get as script
from dnnq.workers.status import STATUSES, TERMINAL, Status

__all__ = [
    "ID_RE",
    "LEASE_LOST",
    "STATUSES",
    "TERMINAL",
    "InvalidId",
    "JobConflict",
    "JobNotFound",
    "Status",
    "TooManyUnfinished",
    "claim",
    "count_by_status",
    "count_unfinished",
    "create_job",
    "create_job_async",
    "finish",
    "get_history",
    "get_history_async",
    "get_job",
    "get_job_async",
    "list_jobs",
    "queue_depth",
    "load_scripts_async",
    "mark_sent",
    "now_iso",
    "record_epochs",
    "record_resume",
    "release",
    "renew_lease",
    "request_cancel",
    "requeue_expired",
    "unsent",
    "validate_id",
]

# record_epochs' answer when the caller's lease token no longer matches: stop, write nothing.
LEASE_LOST = "lease_lost"


class JobNotFound(LookupError):
    def __init__(self, job_id: str):
        super().__init__(f"No job with id '{job_id}'.")
        self.job_id = job_id


class TooManyUnfinished(Exception):
    """create_job refused: the tenant already has `unfinished` queued, running or cancelling jobs."""

    def __init__(self, tenant: str, unfinished: int):
        super().__init__(f"Tenant '{tenant}' already has {unfinished} unfinished jobs.")
        self.tenant = tenant
        self.unfinished = unfinished


class JobConflict(Exception):
    """A transition the current status does not allow (e.g. cancelling a finished job)."""

    def __init__(self, job_id: str, status: str, message: str):
        super().__init__(message)
        self.job_id = job_id
        self.status = status


def now_iso() -> str:
    """Current UTC time as 2026-11-27T21:57:40.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def load_scripts_async(ar: Any) -> None:
    """Load the script the submit route runs (create_job) into Redis's script cache ahead of it: on a
    fresh or restarted Redis every request of the first burst otherwise met NOSCRIPT and loaded it
    itself (two more round trips each)."""
    await script("create_job").load_async(ar)


# ---------------------------------------------------------------------------------------------
# Creating a job (the reads are workers/job_reads.py's, re-exported here)


def _new_job(
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None,
    max_unfinished: int | None,
) -> tuple[dict, list, list]:
    """The record of a new queued job, and create_job.lua's keys and args that write it."""
    validate_id(dataset_id, "dataset")
    if validation_dataset_id is not None:
        validate_id(validation_dataset_id, "dataset")
    keys.queue(queue)  # a malformed queue name is refused before anything is written
    job_id = uuid.uuid4().hex
    record = {
        "id": job_id,
        "tenant": tenant,
        "status": Status.QUEUED.value,
        "queue": queue,
        "spec": json.dumps(spec, sort_keys=True),
        "dataset_id": dataset_id,
        "validation_dataset_id": validation_dataset_id or "",
        "created_at": now_iso(),
        "started_at": "",
        "finished_at": "",
        "device": "",
        "error": "",
        "progress": "",
        "metrics": "",
        "attempts": "0",
        "resumed_from_epoch": "",
        "artifacts": "",
        "timings": "",
    }
    script_keys = [
        keys.job(job_id),
        keys.tenant_jobs(tenant),
        keys.unfinished(tenant),
        keys.BY_STATUS,
        keys.status_index(tenant, Status.QUEUED.value),
        keys.status_index_marker(tenant),
    ]
    args = [job_id, time.time(), int(max_unfinished or 0), json.dumps([x for pair in record.items() for x in pair])]
    return record, script_keys, args


def _created(record: dict, outcome: int) -> dict:
    if outcome >= 0:
        raise TooManyUnfinished(record["tenant"], int(outcome))
    return decode(record)


def create_job(
    r: Any,
    *,
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None = None,
    max_unfinished: int | None = None,
) -> dict:
    """Write a new queued job in one atomic step; returns the decoded record.

    The job is listed in the outbox: the caller sends its Celery message (workers.celery_app.send_train),
    then calls mark_sent; if it never does, the sweeper sends it (workers/recovery.py).

    With max_unfinished, raises TooManyUnfinished instead when the tenant already has that many
    queued, running or cancelling jobs (checked and counted atomically: no overshoot under concurrency).
    """
    record, script_keys, args = _new_job(tenant, spec, queue, dataset_id, validation_dataset_id, max_unfinished)
    return _created(record, script("create_job")(r, script_keys, args))


async def create_job_async(
    ar: Any,
    *,
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None = None,
    max_unfinished: int | None = None,
) -> dict:
    """create_job on a redis.asyncio client (the submit route: no thread hop per request)."""
    record, script_keys, args = _new_job(tenant, spec, queue, dataset_id, validation_dataset_id, max_unfinished)
    return _created(record, await script("create_job").run_async(ar, script_keys, args))


# ---------------------------------------------------------------------------------------------
# The outbox


def unsent(r: Any, min_age_seconds: float = 0.0) -> list[str]:
    """Queued jobs whose Celery message may not be out yet, listed at least min_age_seconds ago (by
    Redis's clock), in the order they were listed."""
    return list(script("outbox_due")(r, [keys.OUTBOX], [int(min_age_seconds * 1000)]))


def mark_sent(r: Any, *job_ids: str) -> None:
    """These jobs' messages are with the broker (or the jobs no longer need one): one ZREM for all."""
    if job_ids:
        r.zrem(keys.OUTBOX, *job_ids)


# ---------------------------------------------------------------------------------------------
# Transitions made by workers (fenced by the lease token)


def claim(r: Any, job_id: str, token: str, lease_ms: int) -> bool:
    """queued -> running; False when the job is not queued (someone else has it, or it is done)."""
    return bool(
        script("claim")(
            r, [keys.job(job_id), keys.job_lease(job_id), keys.ACTIVE], [token, int(lease_ms), now_iso(), job_id]
        )
    )


def renew_lease(r: Any, job_id: str, token: str, lease_ms: int) -> bool:
    """Extend the lease; False = lease lost (expired or taken): stop and write nothing."""
    return bool(script("renew_lease")(r, [keys.job_lease(job_id)], [token, int(lease_ms)]))


def record_epochs(
    r: Any, job_id: str, token: str, entries: list[dict], progress: dict, device: str | None = None
) -> str:
    """Append epochs' history entries (in order) and set progress (and, when given, the device
    training the job: the runner sends it with the first epoch, so a running job already says where
    it runs) in one round trip.

    Returns the current status ("cancelling" => stop), or LEASE_LOST when the token no longer
    holds the lease (nothing written).
    """
    if not entries:
        raise ValueError("record_epochs needs at least one history entry")
    return script("record_epochs")(
        r,
        [keys.job(job_id), keys.job_lease(job_id), keys.job_history(job_id), keys.STATS],
        [token, json.dumps(progress), LEASE_LOST, device or "", *(json.dumps(e) for e in entries)],
    )


def record_resume(r: Any, job_id: str, token: str, epoch: int) -> bool:
    """On a retry: trim history to `epoch` entries and set resumed_from_epoch, if the token holds the lease."""
    return bool(
        script("record_resume")(
            r, [keys.job(job_id), keys.job_lease(job_id), keys.job_history(job_id)], [token, int(epoch)]
        )
    )


def finish(
    r: Any,
    job_id: str,
    token: str,
    status: str,
    *,
    error: str | None = None,
    metrics: dict | None = None,
    artifacts: dict | None = None,
    device: str | None = None,
    timings: dict | None = None,
) -> bool:
    """running|cancelling -> a terminal status. False (nothing written) when the token lost the lease
    or the transition is not allowed (running -> cancelled is not: cancel goes through cancelling)."""
    status = Status(status).value
    if Status(status) not in TERMINAL:
        raise ValueError(f"finish() needs a terminal status ({', '.join(sorted(TERMINAL))}). Got {status!r} instead.")
    fields: list[str] = []
    for name, value in (("error", error), ("device", device)):
        if value is not None:
            fields += [name, value]
    for name, record in (("metrics", metrics), ("artifacts", artifacts), ("timings", timings)):
        if record is not None:
            fields += [name, json.dumps(record, sort_keys=True)]
    return bool(
        script("finish")(
            r,
            [keys.job(job_id), keys.job_lease(job_id), keys.ACTIVE, keys.STATS],
            [token, status, now_iso(), job_id, *fields],
        )
    )


def release(r: Any, job_id: str, token: str, reason: str) -> str:
    """running -> queued at once, keeping the attempt (the worker is shutting down; the job resumes
    from its checkpoint), listed in the outbox: the caller sends its message, then calls mark_sent.
    Returns "queued"; otherwise the status that refused it (e.g. "cancelling": finish the job
    'cancelled' instead), or LEASE_LOST (nothing written)."""
    return script("release")(
        r,
        [keys.job(job_id), keys.job_lease(job_id), keys.ACTIVE],
        [token, now_iso(), job_id, reason, LEASE_LOST],
    )


# ---------------------------------------------------------------------------------------------
# Transitions made by the API and the sweeper


def request_cancel(r: Any, job_id: str) -> str:
    """queued -> cancelled, running|cancelling -> cancelling. Returns the new status.

    Raises JobNotFound (absent or malformed id) or JobConflict (already terminal)."""
    key = record_key(job_id)
    if key is None:
        raise JobNotFound(str(job_id))
    outcome, status = script("cancel")(r, [key, keys.STATS], [now_iso()])
    if outcome == "missing":
        raise JobNotFound(job_id)
    if outcome == "conflict":
        raise JobConflict(
            job_id, status, f"Job '{job_id}' is already {status}; only queued or running jobs can be cancelled."
        )
    return status


def requeue_expired(r: Any, max_attempts: int | None = None) -> list[str]:
    """Jobs in the active set whose lease is gone: running -> queued (listed in the outbox and
    returned: the caller sends them), cancelling -> cancelled. Ids of finished jobs are dropped from
    the set.

    With max_attempts, a running job that has already started that many times goes to failed
    instead: a job that keeps killing its worker (out of memory, a crash in native code) must not
    take down every worker in turn forever.
    """
    error = (
        f"The worker running this job stopped renewing its lease {max_attempts} times (it died, or lost "
        "Redis for longer than DNNQ_LEASE_SECONDS). If the workers' logs show no Redis outage, it most likely "
        "ran out of memory: use a smaller batch_size or fewer hidden units, or raise DNNQ_MAX_ATTEMPTS."
    )
    return list(
        script("requeue_expired")(r, [keys.ACTIVE, keys.STATS], [keys.PREFIX, now_iso(), int(max_attempts or 0), error])
    )
