"""Every Redis key dnnq reads or writes, named in one place.

Everything of ours lives under ``dnnq:``. A tenant's own keys live under ``dnnq:tenant:{tenant}:...``,
a namespace no other key shares, so no tenant name can collide with the state machine's keys (tenant
names never contain ':'). Ids are checked against ID_RE before a key is built from them.

The one exception is a Celery queue: kombu's Redis transport keeps a queue's messages in lists named
after the queue, one per priority step (``default``, ``default:3``, ...), so those are keys too
(QUEUE_RE keeps them apart from ours).
"""

from __future__ import annotations

import re

__all__ = [
    "ACTIVE",
    "BROKER_PRIORITY_SEP",
    "BROKER_PRIORITY_STEPS",
    "BY_STATUS",
    "DEFERRED",
    "FINISHED",
    "HISTORY_MOVES",
    "ID_RE",
    "OUTBOX",
    "PREFIX",
    "QUEUES",
    "QUEUE_RE",
    "STATS",
    "TENANT_PREFIX",
    "TRASH",
    "WORKERS",
    "InvalidId",
    "dataset",
    "idempotency",
    "job",
    "job_history",
    "job_lease",
    "queue",
    "queue_lists",
    "status_index",
    "status_index_marker",
    "sweep",
    "tenant_artifact_bytes",
    "tenant_busy",
    "tenant_datasets",
    "tenant_jobs",
    "tenant_sweeps",
    "unfinished",
    "validate_id",
    "worker",
]

PREFIX = "dnnq:"
TENANT_PREFIX = f"{PREFIX}tenant:"
# A job or dataset id: uuid4().hex for jobs, a sha256 prefix for datasets.
ID_RE = re.compile(r"^[0-9a-f]{24,32}$")
# A Celery queue name, which is also its Redis list key: never one of our dnnq:* keys.
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
QUEUES = ("default", "gpu")  # the queues /metrics reports
# kombu's Redis priorities (Celery's broker_transport_options, set in workers/celery_app.py): a message
# of priority p goes to the list for the step at or below p, named queue + SEP + step (step 0: the
# queue's own name); a worker's BRPOP takes from the steps in this order, so 0 is served first.
BROKER_PRIORITY_STEPS = (0, 3, 6, 9)
BROKER_PRIORITY_SEP = ":"

# Jobs whose worker holds a lease (running or cancelling): what the sweeper checks.
ACTIVE = f"{PREFIX}jobs:active"
# Jobs per status, kept by the same scripts that change a status, so /metrics reads one hash
# instead of every job record.
BY_STATUS = f"{PREFIX}jobs:by_status"
# The outbox: queued jobs whose Celery message may not have been sent, scored by when (Redis's clock,
# ms) they were listed. See workers/jobs.py (who lists them) and workers/recovery.py (who sends late ones).
OUTBOX = f"{PREFIX}jobs:outbox"
# Queued jobs a claim left queued because their tenant already had DNNQ_MAX_WORKERS_PER_TENANT worker
# processes, scored by when (Redis's clock, ms): the sweeper sends them again (workers/recovery.py). Not the
# outbox: a sender's mark_sent right after its send would unlist a job deferred in between, for good.
DEFERRED = f"{PREFIX}jobs:deferred"
# Counters the workers keep (epochs_total, jobs_succeeded_total, training_seconds_total, ...).
STATS = f"{PREFIX}stats"
# Names of registered workers; a worker is alive while its hash (worker(name)) exists.
WORKERS = f"{PREFIX}workers"
# Finished jobs (succeeded, failed, cancelled), scored by when they ended (Redis's clock, ms): what
# the retention sweep reads (workers/recovery.py). Kept by lib.lua's MOVE, removed by delete_job.
FINISHED = f"{PREFIX}jobs:finished"
# Ended jobs whose long history is still in Redis (ended by the sweeper or a cancel, or a finish that
# could not move it), scored like FINISHED: the sweeper moves them to the artifact store.
HISTORY_MOVES = f"{PREFIX}jobs:history_moves"
# Artifact keys and prefixes ("jobs/{id}/", "datasets/{id}.npz") of deleted jobs and datasets whose files
# may still be there, scored by when they may be removed (ms): whoever deletes removes them at once;
# the sweeper removes what a crash left.
TRASH = f"{PREFIX}artifacts:trash"


class InvalidId(ValueError):
    """An id that does not match ID_RE; no Redis key is ever built from it."""


def validate_id(value: str, what: str = "job") -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InvalidId(f"The {what} id must be 24 to 32 lowercase hex characters. Got {value!r} instead.")
    return value


def job(job_id: str) -> str:
    """The job's record (a hash)."""
    return f"{PREFIX}job:{validate_id(job_id)}"


def job_history(job_id: str) -> str:
    """The job's completed epochs, one JSON entry each (a list)."""
    return f"{job(job_id)}:history"


def job_lease(job_id: str) -> str:
    """The token of the worker holding the job, with a TTL (a string)."""
    return f"{job(job_id)}:lease"


def queue(name: str) -> str:
    """The list kombu's Redis transport keeps a Celery queue's messages in (its name)."""
    if not QUEUE_RE.match(name):
        raise ValueError(f"Malformed queue name {name!r}.")
    return name


def queue_lists(name: str) -> list[str]:
    """Every list holding the queue's messages, in the order workers take from them."""
    base = queue(name)
    return [base if step == 0 else f"{base}{BROKER_PRIORITY_SEP}{step}" for step in BROKER_PRIORITY_STEPS]


def tenant_jobs(tenant: str) -> str:
    """The tenant's jobs, scored by creation time (a sorted set)."""
    return f"{TENANT_PREFIX}{tenant}:jobs"


def status_index(tenant: str, status: str) -> str:
    """The tenant's jobs in one status, scored by creation time (kept by the status-changing scripts)."""
    return f"{TENANT_PREFIX}{tenant}:status:{status}"


def status_index_marker(tenant: str) -> str:
    """Present once the tenant's per-status indexes are complete (see workers/lua/list_jobs.lua)."""
    return f"{TENANT_PREFIX}{tenant}:status_index"


def unfinished(tenant: str) -> str:
    """Ids of the tenant's queued, running or cancelling jobs (a set)."""
    return f"{TENANT_PREFIX}{tenant}:unfinished"


def tenant_busy(tenant: str) -> str:
    """The worker processes training the tenant's jobs (ids "{worker name}:{pid}"), each scored by when it
    stops counting (Redis's clock, ms): what DNNQ_MAX_WORKERS_PER_TENANT caps (a sorted set; claim.lua)."""
    return f"{TENANT_PREFIX}{tenant}:busy"


def sweep(sweep_id: str) -> str:
    """A sweep's record (a hash; workers/sweeps.py is its only writer)."""
    return f"{PREFIX}sweep:{validate_id(sweep_id, 'sweep')}"


def tenant_sweeps(tenant: str) -> str:
    """The tenant's sweeps, scored by creation time (a sorted set)."""
    return f"{TENANT_PREFIX}{tenant}:sweeps"


def tenant_artifact_bytes(tenant: str) -> str:
    """The bytes reserved for the tenant's jobs' artifacts (a counter: create_job.lua adds a job's
    reservation with its record, delete_job.lua takes it away with the record; absent: none)."""
    return f"{TENANT_PREFIX}{tenant}:artifact_bytes"


def tenant_datasets(tenant: str) -> str:
    """The tenant's datasets, scored by creation time (a sorted set)."""
    return f"{TENANT_PREFIX}{tenant}:datasets"


def dataset(dataset_id: str) -> str:
    """A dataset's record (a hash)."""
    return f"{PREFIX}dataset:{validate_id(dataset_id, 'dataset')}"


def worker(name: str) -> str:
    """A live worker's heartbeat hash (TTL 3 x heartbeat)."""
    return f"{PREFIX}worker:{name}"


def idempotency(tenant: str, route: str, key: str) -> str:
    """An Idempotency-Key's reservation for one tenant and route (a string with a TTL)."""
    return f"{PREFIX}idem:{tenant}:{route}:{key}"
