"""THE job state machine: the only writer of dnnq:job:* records.

Every transition is one Lua script, so it is atomic: a refused transition writes nothing.

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
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from enum import Enum
from typing import Any

__all__ = [
    "ID_RE",
    "LEASE_LOST",
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
    "load_scripts_async",
    "mark_sent",
    "record_epochs",
    "record_resume",
    "release",
    "renew_lease",
    "request_cancel",
    "requeue_expired",
    "unsent",
    "validate_id",
]

PREFIX = "dnnq:"
ID_RE = re.compile(r"^[0-9a-f]{24,32}$")
# A Celery queue name, which is also its Redis list key: never one of our dnnq:* keys.
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ACTIVE_KEY = "dnnq:jobs:active"
STATS_KEY = "dnnq:stats"
# Jobs per status, kept by the same scripts that change a status, so /metrics reads one hash
# instead of every job record.
BY_STATUS_KEY = "dnnq:jobs:by_status"
# Ids of queued jobs whose Celery message may not have been sent: added in the same step that makes
# a job queued (create_job, the requeue script), removed once the message is out (mark_sent). The
# sweeper sends whatever is left, so a crash between "queued" and "sent" loses no job; a duplicate
# message is harmless (claim is atomic).
UNSENT_KEY = "dnnq:jobs:unsent"
# record_epochs' answer when the caller's lease token no longer matches: stop, write nothing.
LEASE_LOST = "lease_lost"


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class InvalidId(ValueError):
    """An id that does not match ID_RE; no Redis key is ever built from it."""


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


def validate_id(value: str, what: str = "job") -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InvalidId(f"The {what} id must be 24 to 32 lowercase hex characters. Got {value!r} instead.")
    return value


def now_iso() -> str:
    """Current UTC time as 2026-11-27T21:57:40.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{validate_id(job_id)}"


def _keys(job_id: str) -> tuple[str, str, str]:
    base = job_key(job_id)
    return base, f"{base}:history", f"{base}:lease"


# ---------------------------------------------------------------------------------------------
# Lua scripts. KEYS and ARGV are documented at the top of each.

# KEYS: job, tenant jobs, tenant unfinished, by_status, unsent, queue list, tenant's queued index, tenant's
# index marker ; ARGV: job_id, created (epoch seconds), max_unfinished (0 = no limit), message ('' = none),
# the record's field/value pairs as one JSON array of strings. One argument, not 36: redis-py packs each
# argument in Python (isinstance checks, encode), which was ~10% of the API's CPU per submit; Redis's
# cjson decodes the array in microseconds.
# The limit is checked in the same step that counts the new job, so concurrent submits cannot overshoot it.
# With a message (workers/celery_wire.py) the job's Celery message is pushed onto its queue in this same
# step; without one the job is listed as unsent, and the caller sends it and calls mark_sent.
_CREATE = """
local max_unfinished = tonumber(ARGV[3])
if max_unfinished > 0 then
  local unfinished = redis.call('SCARD', KEYS[3])
  if unfinished >= max_unfinished then return unfinished end
end
-- A tenant's first job: its per-status index starts complete (see list_jobs for older tenants).
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[8], '1') end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[5])))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[6], ARGV[4])
else
  redis.call('SADD', KEYS[5], ARGV[1])
end
return -1
"""

# KEYS: job, lease, active ; ARGV: token, lease_ms, now, job_id
_CLAIM = """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running')
MOVE(KEYS[1], ARGV[4], 'queued', 'running')
local started = redis.call('HGET', KEYS[1], 'started_at')
if (not started) or started == '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
-- A released job (see _RELEASE) goes on with the attempt it was released from.
if redis.call('HGET', KEYS[1], 'released') == '1' then
  redis.call('HSET', KEYS[1], 'released', '')
else
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"""

# KEYS: lease ; ARGV: token, lease_ms
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: job, lease, history, stats ; ARGV: token, progress_json, lost, device ('' = unchanged), then one
# history entry (JSON) per epoch, in order
_RECORD_EPOCHS = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return ARGV[3] end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' and st ~= 'cancelling' then return st end
redis.call('RPUSH', KEYS[3], unpack(ARGV, 5))
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'device', ARGV[4]) end
redis.call('HINCRBY', KEYS[4], 'epochs_total', #ARGV - 4)
return st
"""

# KEYS: job, lease, history ; ARGV: token, keep_epochs
_RESUME = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local keep = tonumber(ARGV[2])
if keep <= 0 then redis.call('DEL', KEYS[3]) else redis.call('LTRIM', KEYS[3], 0, keep - 1) end
redis.call('HSET', KEYS[1], 'resumed_from_epoch', ARGV[2])
return 1
"""

# KEYS: job, lease, active, stats ; ARGV: token, new_status, now, job_id, then field/value pairs
_FINISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local st = redis.call('HGET', KEYS[1], 'status')
local new = ARGV[2]
local ok = false
if st == 'running' then ok = (new == 'succeeded' or new == 'failed')
elseif st == 'cancelling' then ok = (new == 'cancelled' or new == 'succeeded' or new == 'failed') end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', new, 'finished_at', ARGV[3])
MOVE(KEYS[1], ARGV[4], st, new)
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SREM', UNFINISHED(redis.call('HGET', KEYS[1], 'tenant')), ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[4], 'jobs_' .. new .. '_total', 1)
return 1
"""

# KEYS: job, lease, active, queue list ; ARGV: token, now, job_id, reason, lost, message ('' = list as unsent).
# The worker hands a running job back at once (it is shutting down, the job did nothing wrong): queued
# again without waiting for the lease to expire, the attempt not spent (claim skips its count while
# 'released' is '1'), and its message pushed on the pop end of its queue so the next free worker
# resumes it first. A cancelling job is not released: the caller finishes it 'cancelled'.
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return ARGV[5] end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' then return st end
redis.call('HSET', KEYS[1], 'status', 'queued', 'released', '1', 'released_at', ARGV[2], 'release_reason', ARGV[4])
MOVE(KEYS[1], ARGV[3], 'running', 'queued')
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[6])
  redis.call('SREM', UNSENT, ARGV[3])  -- its message is out: no sweep sends another
else
  redis.call('SADD', UNSENT, ARGV[3])
end
return 'queued'
"""

# KEYS: job, stats ; ARGV: now
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', ''} end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  MOVE(KEYS[1], redis.call('HGET', KEYS[1], 'id'), 'queued', 'cancelled')
  redis.call('SREM', UNFINISHED(redis.call('HGET', KEYS[1], 'tenant')), redis.call('HGET', KEYS[1], 'id'))
  redis.call('HINCRBY', KEYS[2], 'jobs_cancelled_total', 1)
  return {'ok', 'cancelled'}
end
if st == 'running' or st == 'cancelling' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling')
  MOVE(KEYS[1], redis.call('HGET', KEYS[1], 'id'), st, 'cancelling')
  return {'ok', 'cancelling'}
end
return {'conflict', st}
"""

# KEYS: active, stats ; ARGV: prefix, now, max_attempts (0 = no limit), error message
_REQUEUE = """
local requeued = {}
local max_attempts = tonumber(ARGV[3])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('EXISTS', job .. ':lease') == 0 then
    local st = redis.call('HGET', job, 'status')
    if st == 'running' then
      local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0') or 0
      if max_attempts > 0 and attempts >= max_attempts then
        redis.call('HSET', job, 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[4])
        MOVE(job, id, 'running', 'failed')
        redis.call('HINCRBY', KEYS[2], 'jobs_failed_total', 1)
        redis.call('SREM', UNFINISHED(redis.call('HGET', job, 'tenant')), id)
      else
        redis.call('HSET', job, 'status', 'queued')
        MOVE(job, id, 'running', 'queued')
        redis.call('SADD', UNSENT, id)
        table.insert(requeued, id)
      end
    elseif st == 'cancelling' then
      redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[2])
      MOVE(job, id, 'cancelling', 'cancelled')
      redis.call('HINCRBY', KEYS[2], 'jobs_cancelled_total', 1)
      redis.call('SREM', UNFINISHED(redis.call('HGET', job, 'tenant')), id)
    end
    redis.call('SREM', KEYS[1], id)
  end
end
return requeued
"""

# Every script that ends a job also drops it from its tenant's unfinished set (see count_unfinished).
_UNFINISHED_LUA = (
    f"local function UNFINISHED(tenant) return '{PREFIX}tenant:' .. tenant .. ':unfinished' end\n"
    f"local UNSENT = '{UNSENT_KEY}'\n"
)
_FINISH, _CANCEL, _REQUEUE, _RELEASE = (_UNFINISHED_LUA + src for src in (_FINISH, _CANCEL, _REQUEUE, _RELEASE))
# Every script that changes a status moves one count between BY_STATUS_KEY's fields (what /metrics
# reads), and the job between its tenant's per-status indexes (what GET /v1/jobs?status= pages through),
# keeping its creation time as the score.
_MOVE_LUA = (
    "local function MOVE(job, id, from, to)\n"
    "  if from == to then return end\n"
    f"  redis.call('HINCRBY', '{BY_STATUS_KEY}', from, -1)\n"
    f"  redis.call('HINCRBY', '{BY_STATUS_KEY}', to, 1)\n"
    "  local owner = redis.call('HGET', job, 'tenant')\n"
    "  if not owner then return end\n"
    f"  local tenant = '{PREFIX}tenant:' .. owner\n"
    "  local created = redis.call('ZSCORE', tenant .. ':jobs', id)\n"
    "  redis.call('ZREM', tenant .. ':status:' .. from, id)\n"
    "  if created then redis.call('ZADD', tenant .. ':status:' .. to, created, id) end\n"
    "end\n"
)
_CLAIM, _FINISH, _CANCEL, _REQUEUE, _RELEASE = (
    _MOVE_LUA + src for src in (_CLAIM, _FINISH, _CANCEL, _REQUEUE, _RELEASE)
)

_SCRIPTS: dict[str, Any] = {}
_ASYNC_SCRIPTS: dict[str, Any] = {}


def _run(r, source: str, keys: list, args: list):
    """Run a Lua script by SHA (redis-py loads it on NOSCRIPT), on whichever client is given."""
    script = _SCRIPTS.get(source)
    if script is None:
        script = _SCRIPTS[source] = r.register_script(source)
    return script(keys=keys, args=args, client=r)


async def _run_async(ar, source: str, keys: list, args: list):
    """_run on a redis.asyncio client (its script objects are a different class)."""
    script = _ASYNC_SCRIPTS.get(source)
    if script is None:
        script = _ASYNC_SCRIPTS[source] = ar.register_script(source)
    return await script(keys=keys, args=args, client=ar)


async def load_scripts_async(ar) -> None:
    """Load the script the submit route runs (create) into Redis's script cache ahead of it: on a fresh
    or restarted Redis every request of the first burst otherwise met NOSCRIPT and loaded it itself
    (two more round trips each)."""
    await ar.script_load(_CREATE)


# ---------------------------------------------------------------------------------------------
# Records

_JSON_FIELDS = ("spec", "progress", "metrics", "artifacts", "timings")
_INT_FIELDS = ("attempts", "resumed_from_epoch")


def _decode(raw: dict[str, str]) -> dict[str, Any]:
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


def _new_job(
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None,
    max_unfinished: int | None,
    message_for: Callable[[str, str], str] | None,
) -> tuple[dict, list, list]:
    """The record of a new queued job, and the _CREATE script's keys and args that write it."""
    validate_id(dataset_id, "dataset")
    if validation_dataset_id is not None:
        validate_id(validation_dataset_id, "dataset")
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
    if not QUEUE_RE.match(queue):
        raise ValueError(f"Malformed queue name {queue!r}.")
    keys = [
        job_key(job_id),
        tenant_jobs_key(tenant),
        unfinished_key(tenant),
        BY_STATUS_KEY,
        UNSENT_KEY,
        queue,
        status_index_key(tenant, Status.QUEUED.value),
        status_index_marker(tenant),
    ]
    message = message_for(job_id, queue) if message_for is not None else ""
    args = [
        job_id,
        time.time(),
        int(max_unfinished or 0),
        message,
        json.dumps([x for pair in record.items() for x in pair]),
    ]
    return record, keys, args


def _created(record: dict, outcome: int) -> dict:
    if outcome >= 0:
        raise TooManyUnfinished(record["tenant"], int(outcome))
    return _decode(record)


def create_job(
    r,
    *,
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None = None,
    max_unfinished: int | None = None,
    message_for: Callable[[str, str], str] | None = None,
) -> dict:
    """Write a new queued job in one atomic step; returns the decoded record.

    With ``message_for(job_id, queue)`` (workers.celery_wire.train_message) the job's Celery message
    goes onto the queue's list in that same step. Without it the job is listed in UNSENT_KEY: the
    caller sends the Celery task, then calls mark_sent.

    With max_unfinished, raises TooManyUnfinished instead when the tenant already has that many
    queued, running or cancelling jobs (checked and counted atomically: no overshoot under concurrency).
    """
    record, keys, args = _new_job(tenant, spec, queue, dataset_id, validation_dataset_id, max_unfinished, message_for)
    return _created(record, _run(r, _CREATE, keys, args))


async def create_job_async(
    ar,
    *,
    tenant: str,
    spec: dict,
    queue: str,
    dataset_id: str,
    validation_dataset_id: str | None = None,
    max_unfinished: int | None = None,
    message_for: Callable[[str, str], str] | None = None,
) -> dict:
    """create_job on a redis.asyncio client (the submit route: no thread hop per request)."""
    record, keys, args = _new_job(tenant, spec, queue, dataset_id, validation_dataset_id, max_unfinished, message_for)
    return _created(record, await _run_async(ar, _CREATE, keys, args))


def get_job(r, job_id: str, tenant: str | None = None) -> dict | None:
    """The decoded record, or None when absent, the id is malformed, or it belongs to another tenant."""
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        return None
    return _visible(r.hgetall(job_key(job_id)), tenant)


async def get_job_async(ar, job_id: str, tenant: str | None = None) -> dict | None:
    """get_job on a redis.asyncio client (the API's status-poll path: no thread hop per request)."""
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        return None
    return _visible(await ar.hgetall(job_key(job_id)), tenant)


def _visible(raw: dict, tenant: str | None) -> dict | None:
    if not raw or (tenant is not None and raw.get("tenant") != tenant):
        return None
    return _decode(raw)


# KEYS: tenant jobs, index marker, the listed index (tenant jobs again when unfiltered) ; ARGV: prefix,
# tenant, start, stop. A tenant whose jobs predate the per-status indexes (no marker) has them built
# here once, from its records, in this one atomic step; from then on every status change keeps them.
_LIST = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  local base = ARGV[1] .. 'tenant:' .. ARGV[2] .. ':status:'
  for _, st in ipairs({'queued', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled'}) do
    redis.call('DEL', base .. st)
  end
  local listed = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #listed, 2 do
    local st = redis.call('HGET', ARGV[1] .. 'job:' .. listed[i], 'status')
    if st then redis.call('ZADD', base .. st, listed[i + 1], listed[i]) end
  end
  redis.call('SET', KEYS[2], '1')
end
return {redis.call('ZCARD', KEYS[3]), redis.call('ZREVRANGE', KEYS[3], ARGV[3], ARGV[4])}
"""


def list_jobs(r, tenant: str, status: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[dict], int]:
    """A tenant's jobs, newest first, optionally filtered by status; returns (page, total).

    Reads the page's records and the total only (a sorted set per tenant and per status), however
    many jobs the tenant has."""
    listed = tenant_jobs_key(tenant) if status is None else status_index_key(tenant, Status(status).value)
    total, page_ids = _run(
        r,
        _LIST,
        [tenant_jobs_key(tenant), status_index_marker(tenant), listed],
        [PREFIX, tenant, offset, offset + limit - 1],
    )
    pipe = r.pipeline(transaction=False)
    for job_id in page_ids:
        pipe.hgetall(job_key(job_id))
    return [_decode(raw) for raw in pipe.execute() if raw], int(total)


# A tenant's own keys live under dnnq:tenant:{tenant}:..., a namespace no other key shares, so no
# tenant name can collide with the state machine's keys (tenant names never contain ':').
def tenant_jobs_key(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:jobs"


def status_index_key(tenant: str, status: str) -> str:
    """The tenant's jobs in one status, scored by creation time (kept by the status-changing scripts)."""
    return f"{PREFIX}tenant:{tenant}:status:{status}"


def status_index_marker(tenant: str) -> str:
    """Present once the tenant's per-status indexes are complete (see _LIST)."""
    return f"{PREFIX}tenant:{tenant}:status_index"


def unfinished_key(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:unfinished"


def count_unfinished(r, tenant: str) -> int:
    """How many of the tenant's jobs are queued, running or cancelling: one SCARD, however long the
    tenant's history (the submit route checks it against MAX_QUEUED_JOBS_PER_TENANT on every POST)."""
    return int(r.scard(unfinished_key(tenant)))


def unsent(r) -> list[str]:
    """Queued jobs whose Celery message may not be out yet (see UNSENT_KEY)."""
    return sorted(r.smembers(UNSENT_KEY))


def mark_sent(r, *job_ids: str) -> None:
    """These jobs' messages are with the broker (or the jobs no longer need one): one SREM for all."""
    if job_ids:
        r.srem(UNSENT_KEY, *job_ids)


def count_by_status(r) -> dict[str, int]:
    """Jobs of every tenant per status (one HGETALL; kept by the transition scripts)."""
    counts = {status.value: 0 for status in Status}
    for status, n in r.hgetall(BY_STATUS_KEY).items():
        if status in counts:
            counts[status] = int(n)
    return counts


def get_history(r, job_id: str, start: int = 0, end: int = -1) -> list[dict]:
    """Completed epochs (list indices, inclusive end, as LRANGE)."""
    _, history, _ = _keys(job_id)
    return [json.loads(item) for item in r.lrange(history, start, end)]


async def get_history_async(ar, job_id: str, start: int = 0, end: int = -1) -> list[dict]:
    """get_history on a redis.asyncio client."""
    _, history, _ = _keys(job_id)
    return [json.loads(item) for item in await ar.lrange(history, start, end)]


# ---------------------------------------------------------------------------------------------
# Transitions made by workers (fenced by the lease token)


def claim(r, job_id: str, token: str, lease_ms: int) -> bool:
    """queued -> running; False when the job is not queued (someone else has it, or it is done)."""
    job, _, lease = _keys(job_id)
    return bool(_run(r, _CLAIM, keys=[job, lease, ACTIVE_KEY], args=[token, int(lease_ms), now_iso(), job_id]))


def renew_lease(r, job_id: str, token: str, lease_ms: int) -> bool:
    """Extend the lease; False = lease lost (expired or taken): stop and write nothing."""
    _, _, lease = _keys(job_id)
    return bool(_run(r, _RENEW, keys=[lease], args=[token, int(lease_ms)]))


def record_epochs(r, job_id: str, token: str, entries: list[dict], progress: dict, device: str | None = None) -> str:
    """Append epochs' history entries (in order) and set progress (and, when given, the device
    training the job: the runner sends it with the first epoch, so a running job already says where
    it runs) in one round trip.

    Returns the current status ("cancelling" => stop), or LEASE_LOST when the token no longer
    holds the lease (nothing written).
    """
    if not entries:
        raise ValueError("record_epochs needs at least one history entry")
    job, history, lease = _keys(job_id)
    return _run(
        r,
        _RECORD_EPOCHS,
        keys=[job, lease, history, STATS_KEY],
        args=[token, json.dumps(progress), LEASE_LOST, device or "", *(json.dumps(e) for e in entries)],
    )


def record_resume(r, job_id: str, token: str, epoch: int) -> bool:
    """On a retry: trim history to `epoch` entries and set resumed_from_epoch, if the token holds the lease."""
    job, history, lease = _keys(job_id)
    return bool(_run(r, _RESUME, keys=[job, lease, history], args=[token, int(epoch)]))


def finish(
    r,
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
    job, _, lease = _keys(job_id)
    fields: list[str] = []
    for name, value in (("error", error), ("device", device)):
        if value is not None:
            fields += [name, value]
    for name, value in (("metrics", metrics), ("artifacts", artifacts), ("timings", timings)):
        if value is not None:
            fields += [name, json.dumps(value, sort_keys=True)]
    return bool(
        _run(r, _FINISH, keys=[job, lease, ACTIVE_KEY, STATS_KEY], args=[token, status, now_iso(), job_id, *fields])
    )


def release(
    r,
    job_id: str,
    token: str,
    reason: str,
    *,
    queue: str | None = None,
    message_for: Callable[[str, str], str] | None = None,
) -> str:
    """running -> queued at once, keeping the attempt (the worker is shutting down; the job resumes
    from its checkpoint). Returns "queued"; otherwise the status that refused it (e.g. "cancelling":
    finish the job 'cancelled' instead), or LEASE_LOST (nothing written).

    With ``queue`` and ``message_for(job_id, queue)`` (workers.celery_wire.train_message) the job's
    message goes on that queue in the same step, to be taken next; without, the job is listed as
    unsent and the next sweep sends it.
    """
    job, _, lease = _keys(job_id)
    if queue is not None and not QUEUE_RE.match(queue):
        raise ValueError(f"Malformed queue name {queue!r}.")
    message = message_for(job_id, queue) if message_for is not None and queue is not None else ""
    return _run(
        r,
        _RELEASE,
        keys=[job, lease, ACTIVE_KEY, queue or "default"],
        args=[token, now_iso(), job_id, reason, LEASE_LOST, message],
    )


# ---------------------------------------------------------------------------------------------
# Transitions made by the API and the sweeper


def request_cancel(r, job_id: str) -> str:
    """queued -> cancelled, running|cancelling -> cancelling. Returns the new status.

    Raises JobNotFound (absent or malformed id) or JobConflict (already terminal)."""
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        raise JobNotFound(str(job_id))
    outcome, status = _run(r, _CANCEL, keys=[job_key(job_id), STATS_KEY], args=[now_iso()])
    if outcome == "missing":
        raise JobNotFound(job_id)
    if outcome == "conflict":
        raise JobConflict(
            job_id, status, f"Job '{job_id}' is already {status}; only queued or running jobs can be cancelled."
        )
    return status


def requeue_expired(r, max_attempts: int | None = None) -> list[str]:
    """Jobs in dnnq:jobs:active whose lease is gone: running -> queued (returned: the caller re-sends
    them), cancelling -> cancelled. Ids of finished jobs are dropped from the set.

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
        _run(r, _REQUEUE, keys=[ACTIVE_KEY, STATS_KEY], args=[PREFIX, now_iso(), int(max_attempts or 0), error])
    )
