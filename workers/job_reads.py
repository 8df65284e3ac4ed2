"""Reading job records: a record, its history, a tenant's page of jobs, counts.

Each sync/async pair shares everything but the Redis call. Only workers/jobs.py writes what these read
(it re-exports them, so callers say ``jobs.get_job``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dnnq.workers import keys
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.history_store import lrange, read_history
from dnnq.workers.keys import ID_RE
from dnnq.workers.scripts import get as script
from dnnq.workers.status import STATUSES, Status

__all__ = [
    "count_by_status",
    "count_unfinished",
    "decode",
    "get_history",
    "get_history_async",
    "get_job",
    "get_job_async",
    "list_jobs",
    "queue_depth",
    "record_key",
]

_JSON_FIELDS = ("spec", "progress", "metrics", "artifacts", "timings", "sweep_overrides")
_INT_FIELDS = (
    "attempts",
    "resumed_from_epoch",
    "sweep_trial",
    "history_stored",
    "artifact_bytes",
)  # sweep_*: a sweep's trial (workers/sweeps.py)


def decode(raw: dict[str, str]) -> dict[str, Any]:
    """Hash strings -> Python values: "" -> None, JSON fields parsed, counters as int."""
    job: dict[str, Any] = {}
    for k, v in raw.items():
        if v == "":
            job[k] = None
        elif k in _JSON_FIELDS:
            job[k] = json.loads(v)
        elif k in _INT_FIELDS:
            job[k] = int(v)
        else:
            job[k] = v
    return job


def record_key(job_id: str) -> str | None:
    """The record's key, None for an id no record can have."""
    return keys.job(job_id) if isinstance(job_id, str) and ID_RE.match(job_id) else None


def _visible(raw: dict, tenant: str | None) -> dict | None:
    if not raw or (tenant is not None and raw.get("tenant") != tenant):
        return None
    return decode(raw)


def get_job(r: Any, job_id: str, tenant: str | None = None) -> dict | None:
    """The decoded record, or None when absent, the id is malformed, or it belongs to another tenant."""
    key = record_key(job_id)
    return None if key is None else _visible(r.hgetall(key), tenant)


async def get_job_async(ar: Any, job_id: str, tenant: str | None = None) -> dict | None:
    """get_job on a redis.asyncio client (the API's status-poll path: no thread hop per request)."""
    key = record_key(job_id)
    return None if key is None else _visible(await ar.hgetall(key), tenant)


def _entries(raw: list[str]) -> list[dict]:
    return [json.loads(item) for item in raw]


# A finished job's long history is in the artifact store (workers/history_store.py), the record's
# history_stored field saying how many epochs; one atomic script set the field and dropped the list, so
# a list read empty and the field read after it never miss both. A caller with the record (`job`) reads
# the list alone (one round trip, as before the move existed) unless the record says the history moved,
# and asks for the field only when the list was empty where it could have moved since the record was
# read: a whole-history read of a job not queued. (An SSE stream reading from an index catches up on its
# next poll, whose record says where the history is.)


def _stored(store: ArtifactStore | None, job_id: str, start: int, end: int) -> list[dict]:
    if store is None:
        from dnnq.workers.artifact_store import open_store  # this process's store (DNNQ_DATA_DIR)

        store = open_store()
    return lrange(read_history(store, job_id), start, end)


def _moved(job: dict | None) -> bool:
    return job is not None and bool(job.get("history_stored"))


def _ask_field(raw: list, start: int, job: dict | None) -> bool:
    return not raw and (job is None or (start == 0 and job.get("status") != "queued"))


def get_history(
    r: Any,
    job_id: str,
    start: int = 0,
    end: int = -1,
    *,
    store: ArtifactStore | None = None,
    job: dict | None = None,
) -> list[dict]:
    """Completed epochs (list indices, inclusive end, as LRANGE), from Redis or, once the job's history
    moved, from `store` (default: this process's). `job`: its record when the caller has it (a moved
    history then needs no Redis read)."""
    if _moved(job):
        return _stored(store, job_id, start, end)
    raw = r.lrange(keys.job_history(job_id), start, end)
    if _ask_field(raw, start, job) and r.hget(keys.job(job_id), "history_stored"):
        return _stored(store, job_id, start, end)
    return _entries(raw)


async def get_history_async(
    ar: Any,
    job_id: str,
    start: int = 0,
    end: int = -1,
    *,
    store: ArtifactStore | None = None,
    job: dict | None = None,
) -> list[dict]:
    """get_history on a redis.asyncio client (the store's read on a thread: an object store's GET)."""
    if not _moved(job):
        raw = await ar.lrange(keys.job_history(job_id), start, end)
        if not (_ask_field(raw, start, job) and await ar.hget(keys.job(job_id), "history_stored")):
            return _entries(raw)
    return await asyncio.to_thread(_stored, store, job_id, start, end)


def list_jobs(
    r: Any, tenant: str, status: str | None = None, offset: int = 0, limit: int = 50
) -> tuple[list[dict], int]:
    """A tenant's jobs, newest first, optionally filtered by status; returns (page, total).

    Reads the page's records and the total only (a sorted set per tenant and per status), however
    many jobs the tenant has."""
    listed = keys.tenant_jobs(tenant) if status is None else keys.status_index(tenant, Status(status).value)
    total, page_ids = script("list_jobs")(
        r,
        [keys.tenant_jobs(tenant), keys.status_index_marker(tenant), listed],
        [keys.PREFIX, tenant, offset, offset + limit - 1],
    )
    pipe = r.pipeline(transaction=False)
    for job_id in page_ids:
        pipe.hgetall(keys.job(job_id))
    return [decode(raw) for raw in pipe.execute() if raw], int(total)


def count_unfinished(r: Any, tenant: str) -> int:
    """How many of the tenant's jobs are queued, running or cancelling: one SCARD, however long the
    tenant's history."""
    return int(r.scard(keys.unfinished(tenant)))


def count_by_status(r: Any) -> dict[str, int]:
    """Jobs of every tenant per status (one HGETALL; kept by the transition scripts)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in r.hgetall(keys.BY_STATUS).items():
        if status in counts:
            counts[status] = int(n)
    return counts


def queue_depth(r: Any, queue: str) -> int:
    """Messages waiting in a Celery queue, over all its priority lists (keys.queue_lists)."""
    pipe = r.pipeline(transaction=False)
    for name in keys.queue_lists(queue):
        pipe.llen(name)
    return sum(pipe.execute())
