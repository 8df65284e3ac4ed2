"""THE job state machine: the only writer of dnnq:job:* records.

Every transition is one Lua script (workers/lua/), so it is atomic: a refused transition writes nothing.

    queued -> running            claim (sets lease; attempts += 1)
    queued -> queued             claim_within_share: the tenant's worker cap is reached (listed in DEFERRED)
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
message is harmless: claim is atomic. A job a claim defers (DNNQ_MAX_WORKERS_PER_TENANT) is listed in
keys.DEFERRED instead, which the sweeper sends the same way.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from dnnq.workers import keys, trash
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.history_store import HISTORY_INLINE_MAX, forget, write_history
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
from dnnq.workers.logs import event
from dnnq.workers.scripts import get as script
from dnnq.workers.status import STATUSES, TERMINAL, Status

__all__ = [
    "HISTORY_INLINE_MAX",
    "ID_RE",
    "LEASE_LOST",
    "STATUSES",
    "TERMINAL",
    "ArtifactQuotaExceeded",
    "ClaimOutcome",
    "DatasetMissing",
    "InvalidId",
    "JobConflict",
    "JobNotFound",
    "Share",
    "Status",
    "TooManyUnfinished",
    "claim",
    "claim_within_share",
    "count_by_status",
    "count_unfinished",
    "create_job",
    "create_job_async",
    "delete_job",
    "delete_job_keys",
    "deferred_due",
    "deleted_files",
    "finish",
    "finished_before",
    "get_history",
    "get_history_async",
    "get_job",
    "get_job_async",
    "list_jobs",
    "queue_depth",
    "load_scripts_async",
    "mark_sent",
    "move_history",
    "pending_history_moves",
    "now_iso",
    "record_epochs",
    "record_epochs_many",
    "record_resume",
    "release",
    "release_share",
    "renew_lease",
    "renew_share",
    "request_cancel",
    "requeue_expired",
    "unlist_deferred",
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


class ArtifactQuotaExceeded(Exception):
    """create_job (or create_sweep) refused: the bytes reserved for the tenant's jobs' artifacts and the
    `need` of the new job(s) would pass `quota` (workers/artifact_quota.py says what a job reserves)."""

    def __init__(
        self, need: int, used: int, quota: int, what: str = "This job", fewer: str = "a smaller network or fewer epochs"
    ) -> None:
        smaller = f" (more than the whole quota: use {fewer})" if need > quota else ""
        super().__init__(
            f"{what} may store up to {need} bytes of artifacts (weights in every format, a checkpoint, the "
            f"history){smaller}, which would take this API key's jobs to {used + need} bytes, over its quota of "
            f"{quota} bytes (DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT; {used} bytes are in use): delete finished jobs "
            "you no longer need (DELETE /v1/jobs/{id} or /v1/sweeps/{id}), or ask the operator to raise "
            "DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT."
        )
        self.need, self.used, self.quota = need, used, quota


class DatasetMissing(LookupError):
    """create_job refused (require_datasets): a dataset it names does not exist (or was just deleted)."""

    def __init__(self, dataset_ids: list[str]):
        super().__init__(f"No dataset with id {' or '.join(repr(d) for d in dataset_ids)}.")
        self.dataset_ids = dataset_ids


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
    extra: dict[str, str] | None = None,
    *,
    require_datasets: bool = False,
    idempotency_key: str | None = None,
    artifact_bytes: int = 0,
    max_artifact_bytes: int | None = None,
) -> tuple[dict, list, list]:
    """The record of a new queued job, and create_job.lua's keys and args that write it. `extra`: more
    fields of the record (a sweep's trial names its sweep: workers/sweeps.py runs these in one script).
    `artifact_bytes`: what the job reserves against its tenant's artifact quota (the record keeps it,
    delete_job.lua gives it back)."""
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
        "artifact_bytes": str(int(artifact_bytes)),
        **(extra or {}),
    }
    if idempotency_key is not None:  # the reservation naming this job: delete_job removes it too
        record["idempotency_key"] = idempotency_key
    script_keys = [
        keys.job(job_id),
        keys.tenant_jobs(tenant),
        keys.unfinished(tenant),
        keys.BY_STATUS,
        keys.status_index(tenant, Status.QUEUED.value),
        keys.status_index_marker(tenant),
        keys.tenant_artifact_bytes(tenant),
    ]
    if require_datasets:  # checked in the same script: a dataset deleted meanwhile cannot be used
        script_keys += [keys.dataset(d) for d in (dataset_id, validation_dataset_id) if d is not None]
    args = [
        job_id,
        time.time(),
        int(max_unfinished or 0),
        json.dumps([x for pair in record.items() for x in pair]),
        int(max_artifact_bytes or 0),
        int(artifact_bytes),
    ]
    return record, script_keys, args


def _created(record: dict, outcome: Any, quota: int | None) -> dict:
    if isinstance(outcome, list):  # ['over', bytes in use]: nothing was written
        raise ArtifactQuotaExceeded(int(record["artifact_bytes"]), int(outcome[1]), int(quota or 0))
    if outcome == -2:
        raise DatasetMissing([d for d in (record["dataset_id"], record["validation_dataset_id"]) if d])
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
    require_datasets: bool = False,
    idempotency_key: str | None = None,
    artifact_bytes: int = 0,
    max_artifact_bytes: int | None = None,
) -> dict:
    """Write a new queued job in one atomic step; returns the decoded record.

    The job is listed in the outbox: the caller sends its Celery message (workers.celery_app.send_train),
    then calls mark_sent; if it never does, the sweeper sends it (workers/recovery.py).

    With max_unfinished, raises TooManyUnfinished instead when the tenant already has that many
    queued, running or cancelling jobs (checked and counted atomically: no overshoot under concurrency).

    With require_datasets (the submit route), raises DatasetMissing instead when a dataset it names does
    not exist, checked in the same step, so a dataset deleted at the same moment (datasets.delete_dataset)
    is never used. idempotency_key: the Redis key of the Idempotency-Key reservation that names this job
    (delete_job removes it with the job).

    artifact_bytes (workers/artifact_quota.py) is added to the tenant's reserved artifact bytes with the
    record; with max_artifact_bytes, raises ArtifactQuotaExceeded instead, writing nothing, when that would
    take them past it (checked in the same step: two submits at once cannot both take the last room).
    """
    record, script_keys, args = _new_job(
        tenant,
        spec,
        queue,
        dataset_id,
        validation_dataset_id,
        max_unfinished,
        require_datasets=require_datasets,
        idempotency_key=idempotency_key,
        artifact_bytes=artifact_bytes,
        max_artifact_bytes=max_artifact_bytes,
    )
    return _created(record, script("create_job")(r, script_keys, args), max_artifact_bytes)


async def create_job_async(
    ar: Any,
    *,
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None = None,
    max_unfinished: int | None = None,
    require_datasets: bool = False,
    idempotency_key: str | None = None,
    artifact_bytes: int = 0,
    max_artifact_bytes: int | None = None,
) -> dict:
    """create_job on a redis.asyncio client (the submit route: no thread hop per request)."""
    record, script_keys, args = _new_job(
        tenant,
        spec,
        queue,
        dataset_id,
        validation_dataset_id,
        max_unfinished,
        require_datasets=require_datasets,
        idempotency_key=idempotency_key,
        artifact_bytes=artifact_bytes,
        max_artifact_bytes=max_artifact_bytes,
    )
    return _created(record, await script("create_job").run_async(ar, script_keys, args), max_artifact_bytes)


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


class ClaimOutcome(str, Enum):
    CLAIMED = "claimed"
    NOT_QUEUED = "not_queued"  # someone else has it, or it is done
    DEFERRED = "deferred"  # its tenant already has its share of worker processes: still queued


@dataclass(frozen=True)
class Share:
    """A worker process's place among the processes training one tenant's jobs, of which there may be at
    most `cap` (DNNQ_MAX_WORKERS_PER_TENANT) at once: `member` names the process, so the trials of a sweep
    pack, which one process trains, count once."""

    tenant: str
    member: str
    cap: int


def claim(r: Any, job_id: str, token: str, lease_ms: int, celery_task_id: str | None = None) -> bool:
    """queued -> running; False when the job is not queued (someone else has it, or it is done).
    celery_task_id: the delivering task's id, kept in the record (what Flower and `celery events` show)."""
    return claim_within_share(r, job_id, token, lease_ms, None, celery_task_id) is ClaimOutcome.CLAIMED


def claim_within_share(
    r: Any, job_id: str, token: str, lease_ms: int, share: Share | None, celery_task_id: str | None = None
) -> ClaimOutcome:
    """claim, within the tenant's cap of worker processes when `share` is given (None, or cap 0: claim's own
    step, which writes no busy set). A process outside the busy set while `cap` others are in it claims
    nothing: the job stays queued, attempts unchanged, and is listed in keys.DEFERRED for the sweeper to send
    again (DEFERRED). A claim adds the process to the set, counting until lease_ms from now: renew_share
    pushes that back while it trains, release_share takes it out when its task ends."""
    script_keys = [keys.job(job_id), keys.job_lease(job_id), keys.ACTIVE]
    args: list[Any] = [token, int(lease_ms), now_iso(), job_id, celery_task_id or ""]
    if share is not None and share.cap > 0:
        script_keys += [keys.tenant_busy(share.tenant), keys.DEFERRED]
        args += [share.member, int(share.cap)]
    outcome = int(script("claim")(r, script_keys, args))
    if outcome == -1:
        return ClaimOutcome.DEFERRED
    return ClaimOutcome.CLAIMED if outcome == 1 else ClaimOutcome.NOT_QUEUED


def renew_share(r: Any, share: Share, lease_ms: int) -> None:
    """The process still trains the tenant's jobs: it counts until lease_ms from now (by Redis's clock),
    while it is still in the busy set."""
    if share.cap > 0:
        script("renew_share")(r, [keys.tenant_busy(share.tenant)], [share.member, int(lease_ms)])


def release_share(r: Any, share: Share) -> None:
    """The process's task has ended: it no longer counts against its tenant's cap."""
    if share.cap > 0:
        r.zrem(keys.tenant_busy(share.tenant), share.member)


def deferred_due(r: Any, min_age_seconds: float = 0.0) -> list[tuple[str, int]]:
    """Jobs a claim deferred at least min_age_seconds ago (by Redis's clock), with the score they were
    listed at (what unlist_deferred compares), oldest first."""
    flat = script("outbox_due")(r, [keys.DEFERRED], [int(min_age_seconds * 1000), "1"])
    return [(str(job_id), int(float(score))) for job_id, score in zip(flat[::2], flat[1::2], strict=True)]


def unlist_deferred(r: Any, job_id: str, score: int) -> None:
    """The sweeper sent a deferred job again (or it is no longer queued): unlist it, unless a claim
    deferred it again since it was read at `score`."""
    script("unlist_deferred")(r, [keys.DEFERRED], [job_id, int(score)])


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


def record_epochs_many(r: Any, writes: list[tuple[str, str, list[dict], dict]]) -> list[str]:
    """record_epochs for several jobs (job_id, token, entries, progress) in one round trip (a pipeline;
    each write is its own atomic step, as record_epochs's). Returns each job's record_epochs answer."""
    pipe = r.pipeline(transaction=False)
    for job_id, token, entries, progress in writes:
        record_epochs(pipe, job_id, token, entries, progress)  # queued on the pipeline; answers come at execute
    return list(pipe.execute())


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
    store: ArtifactStore | None = None,
) -> bool:
    """running|cancelling -> a terminal status. False (nothing written) when the token lost the lease
    or the transition is not allowed (running -> cancelled is not: cancel goes through cancelling).

    With the artifact store (the worker's finish), a history longer than HISTORY_INLINE_MAX epochs is
    written to it first and leaves Redis in the finish's own step, its last entry kept in the record
    (`history_last`: what a sweep ranks its trials by); without one, or when that write fails, the job
    is listed for the sweeper to move (move_history, which keeps it the same way)."""
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
    moved = _store_history(r, store, job_id) if store is not None else 0
    done = bool(
        script("finish")(
            r,
            [keys.job(job_id), keys.job_lease(job_id), keys.ACTIVE, keys.STATS, keys.job_history(job_id)],
            [token, status, now_iso(), job_id, moved, *fields],
        )
    )
    if moved and store is not None and not done and not r.exists(keys.job(job_id)):
        store.delete_prefix(f"jobs/{job_id}/")  # the job was deleted meanwhile: no file may outlive it
    return done


def _store_history(r: Any, store: ArtifactStore, job_id: str) -> int:
    """Write a long history to the store before the finish that drops it from Redis: the number of
    entries written (0: short enough to stay, or the write failed and the sweeper moves it later)."""
    raw = r.lrange(keys.job_history(job_id), 0, -1)
    if len(raw) <= HISTORY_INLINE_MAX:
        return 0
    try:
        write_history(store, job_id, raw)
    except Exception as exc:  # the store is down: the job still finishes, its history stays in Redis
        event("job.history_store_failed", logging.WARNING, job_id=job_id, error=str(exc))
        return 0
    return len(raw)


# ---------------------------------------------------------------------------------------------
# Ended jobs: their histories move to the artifact store; deleting them


def pending_history_moves(r: Any, limit: int = 100) -> list[str]:
    """Ended jobs whose long history is still in Redis, oldest first (what the sweeper moves)."""
    return list(r.zrange(keys.HISTORY_MOVES, 0, limit - 1))


def move_history(r: Any, store: ArtifactStore, job_id: str) -> str:
    """Move an ended job's history to the artifact store: the file is written whole, then one script
    drops the list from Redis only if it still holds exactly what was written. Safe to run twice, by
    several sweepers at once, and after a crash at any point (the list stays until the file holds it).
    Returns "moved", "kept" (short enough to stay), "missing" (deleted: the file written is removed), or
    the status or "changed" that left the list where it is."""
    raw = r.lrange(keys.job_history(job_id), 0, -1)
    if len(raw) <= HISTORY_INLINE_MAX:
        r.zrem(keys.HISTORY_MOVES, job_id)
        return "kept"
    write_history(store, job_id, raw)
    outcome = str(
        script("move_history")(r, [keys.job(job_id), keys.job_history(job_id), keys.HISTORY_MOVES], [job_id, len(raw)])
    )
    if outcome == "missing":  # deleted meanwhile: what was just written goes too
        store.delete_prefix(f"jobs/{job_id}/")
    return outcome


def delete_job(r: Any, store: ArtifactStore, job_id: str, tenant: str | None = None) -> None:
    """Delete a finished job (succeeded, failed or cancelled): its record, history, lease, its place
    in every index and count, the Idempotency-Key entry naming it (one script, so a worker finishing or
    claiming it at the same moment sees it whole or not at all), then its artifacts (jobs/{id}/).

    Raises JobNotFound (absent, malformed id, or another tenant's when `tenant` is given) or
    JobConflict (queued, running or cancelling: cancel it first)."""
    key = record_key(job_id)
    if key is None:
        raise JobNotFound(str(job_id))
    prefix = f"jobs/{job_id}/"
    outcome, detail = script("delete_job")(
        r, delete_job_keys(job_id), [job_id, tenant or "", prefix, int(trash.TRASH_GRACE_SECONDS * 1000)]
    )
    if outcome == "missing":
        raise JobNotFound(job_id)
    if outcome == "conflict":
        raise JobConflict(
            job_id,
            detail,
            f"Job '{job_id}' is {detail}; only a finished job can be deleted. Cancel it first "
            f"(POST /v1/jobs/{job_id}/cancel), then delete it once it has stopped.",
        )
    deleted_files(r, store, job_id, detail)


def delete_job_keys(job_id: str) -> list[str]:
    """delete_job.lua's KEYS for one job (workers/sweeps.py runs that script once per trial too)."""
    return [
        keys.job(job_id),
        keys.job_history(job_id),
        keys.job_lease(job_id),
        keys.ACTIVE,
        keys.OUTBOX,
        keys.FINISHED,
        keys.HISTORY_MOVES,
        keys.TRASH,
        keys.BY_STATUS,
    ]


def deleted_files(r: Any, store: ArtifactStore, job_id: str, moving: str) -> None:
    """After delete_job.lua removed a job from Redis: its artifacts (jobs/{id}/) and cached history.
    `moving` is the script's second answer ("0": no history move was in flight)."""
    prefix = f"jobs/{job_id}/"
    forget(job_id)
    if moving == "0":  # no history move in flight: nothing can write under the prefix any more
        trash.remove(r, store, prefix)
    else:
        store.delete_prefix(prefix)  # and again after the grace, by the sweeper


def finished_before(r: Any, max_age_seconds: float, limit: int = 1000) -> list[str]:
    """Jobs that ended at least max_age_seconds ago (by Redis's clock), oldest first: what retention
    deletes."""
    return list(script("outbox_due")(r, [keys.FINISHED], [int(max_age_seconds * 1000)]))[:limit]


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
