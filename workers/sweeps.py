"""Sweeps: one request, many trials; each trial an ordinary job that also names its sweep.

This module is the only writer of sweep records (``dnnq:sweep:{id}``, ``dnnq:tenant:{t}:sweeps``). A
sweep's trials are written, with the sweep, in ONE Lua step (lua/create_sweep.lua) that runs create_job's
own script body once per trial: each trial is the same queued job a submit makes (same record, indexes
and outbox entry), plus ``sweep_id``, ``sweep_trial`` (its index), ``sweep_overrides`` (JSON) and
``sweep_pack``. Once written, a trial's state changes only through workers/jobs.py, like any job.

Packs: trials that could train as one stacked computation (same dataset, layer sizes, activations,
output, batch size, shuffle order, dtype, device, input scale) share a pack id (pack_key). The sweep
record lists its packs (``packs``: pack id -> trial indexes), so a pack runner that receives any
trial's message can find its siblings and claim the queued ones (each claim atomic: a trial already
taken by another worker is simply not in the pack); every trial keeps its own message, which then
finds its job claimed and does nothing.

Expanding a request (expand, trial_specs) is pure: it raises SweepError naming the trial and field.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from pydantic import BaseModel, ValidationError

from dnnq.workers import history_store, jobs, keys, trash
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.job_reads import decode
from dnnq.workers.scripts import Script
from dnnq.workers.scripts import get as script
from dnnq.workers.spec import JobSpec, queue_for

__all__ = [
    "ALIASES",
    "METRICS",
    "SweepConflict",
    "SweepError",
    "SweepNotFound",
    "TooManyUnfinished",
    "Trial",
    "best_trial",
    "cancel_sweep",
    "create_sweep",
    "create_sweep_async",
    "default_metric",
    "delete_sweep",
    "expand",
    "expand_names",
    "field_paths",
    "get_sweep",
    "list_sweeps",
    "metric_value",
    "pack_key",
    "get_sweep_async",
    "trial_histories_async",
    "trial_history_lengths",
    "trial_jobs",
    "trial_jobs_async",
    "trial_specs",
    "trial_states",
    "trial_states_async",
]

TooManyUnfinished = jobs.TooManyUnfinished

# Short names a client may use for a field (besides the field's own name and its dotted path).
ALIASES = {"lr": "training.learning_rate", "keep_prob": "training.dropout_keep_prob"}

# Metrics a sweep ranks its trials by, each read from a trial's last completed epoch: True = lower is better.
METRICS = {"val_loss": True, "loss": True, "val_accuracy": False, "accuracy": False}

MAX_REPORTED_ERRORS = 20  # a sweep of bad trials gets the first errors, not one per trial


class SweepError(ValueError):
    """A sweep request that cannot be expanded: `errors` lists {"field", "message"} (the field names the
    trial, e.g. 'trials[3].training.learning_rate', or the grid entry)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors[:MAX_REPORTED_ERRORS]
        if len(errors) > MAX_REPORTED_ERRORS:
            self.errors.append({"field": "trials", "message": f"and {len(errors) - MAX_REPORTED_ERRORS} more."})
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in self.errors))


def _one(field: str, message: str) -> SweepError:
    return SweepError([{"field": field, "message": message}])


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Every settable field of a spec model: dotted path -> itself, nested models walked."""
    out: dict[str, str] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaf_paths(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = f"{prefix}{name}"
    return out


def field_paths() -> dict[str, str]:
    """Every name a sweep accepts for a JobSpec field -> its dotted path: the path itself, the bare
    field name where only one section has it (learning_rate, hidden_layers, scale), and ALIASES."""
    paths = _leaf_paths(JobSpec)
    names: dict[str, list[str]] = {}
    for path in paths:
        names.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    out = {name: found[0] for name, found in names.items() if len(found) == 1}
    out.update(paths)
    out.update(ALIASES)
    return out


_PATHS = field_paths()
_SECTIONS = {path.rsplit(".", 1)[0] for path in _PATHS.values() if "." in path}  # model, training, preprocess


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _path_of(name: Any, where: str) -> str:
    path = _PATHS.get(name) if isinstance(name, str) else None
    if path is None:
        raise _one(
            where,
            f"unknown field {_shown(name)}; sweep a JobSpec field by its path (training.learning_rate, "
            "model.hidden_layers, ...), its name where unique (learning_rate, l2, seed, epochs, hidden_layers) "
            f"or an alias ({', '.join(sorted(ALIASES))}).",
        )
    return path


def _flatten(overrides: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """{"training": {"l2": 0.1}, "lr": 0.01} -> {"training.l2": 0.1, "training.learning_rate": 0.01}."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        full = f"{prefix}{name}" if isinstance(name, str) else name
        if isinstance(value, Mapping) and full in _SECTIONS:
            out.update(_flatten(value, where, f"{full}."))
            continue
        named = full if isinstance(full, str) and len(full) <= 60 else _shown(full)
        path = _path_of(full, f"{where}.{named}")
        if path in out:
            raise _one(f"{where}.{path}", f"{path} is given twice ({_shown(full)} is another name for it).")
        out[path] = value
    return out


def expand_names(grid: Mapping[str, Any]) -> dict[str, Any]:
    """A grid as asked (names, aliases, nested sections) by dotted path."""
    return _flatten(grid, "grid")


def expand(grid: Mapping[str, Any] | None, trials: Sequence[Any] | None, max_trials: int) -> list[dict[str, Any]]:
    """The trials' overrides ({dotted path: value}), in order: the grid's cartesian product (its first
    field varying slowest) or the list as given. Raises SweepError; too many trials names the limit."""
    if (grid is None) == (trials is None):
        raise _one("grid", "send exactly one of 'grid' (field -> list of values) or 'trials' (a list of overrides).")
    if grid is not None:
        if not isinstance(grid, Mapping) or not grid:
            raise _one("grid", "grid must be an object of at least one field -> list of values.")
        flat = _flatten(grid, "grid")
        count = 1
        for path, values in flat.items():
            if not isinstance(values, list) or not values:
                raise _one(f"grid.{path}", f"needs a non-empty list of values. Got {_shown(values)} instead.")
            count *= len(values)
            if count > max_trials:  # checked as it grows: never a product of huge lists
                raise _too_many(f"more than {max_trials}", max_trials, "grid")
        names = list(flat)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*flat.values())]
    if not isinstance(trials, list) or not trials:
        raise _one("trials", "trials must be a non-empty list of objects (each a trial's overrides).")
    if len(trials) > max_trials:
        raise _too_many(str(len(trials)), max_trials, "trials")
    out = []
    for i, overrides in enumerate(trials):
        if not isinstance(overrides, Mapping):
            raise _one(f"trials[{i}]", f"each trial is an object of field -> value. Got {_shown(overrides)} instead.")
        out.append(_flatten(overrides, f"trials[{i}]"))
    return out


def _too_many(count: str, max_trials: int, field: str) -> SweepError:
    return _one(
        field,
        f"{count} trials is over the limit of {max_trials} per sweep (DNNQ_MAX_SWEEP_TRIALS); "
        "sweep fewer values, or split the sweep in several.",
    )


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = body
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def trial_specs(base: Mapping[str, Any], overrides: Sequence[Mapping[str, Any]]) -> list[JobSpec]:
    """Each trial's JobSpec: the base body (a JobSpec's JSON) with the trial's overrides, validated as a
    whole spec. Raises SweepError naming each bad trial's index, field and overrides."""
    specs, errors = [], []
    base_json = json.dumps(base)
    for i, trial in enumerate(overrides):
        body = json.loads(base_json)  # a deep copy
        for path, value in trial.items():
            _set(body, path, value)
        try:
            specs.append(JobSpec.model_validate(body))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err.get("loc", ())) or "body"
                errors.append(
                    {
                        "field": f"trials[{i}].{field}",
                        "message": f"{err.get('msg', 'invalid')} (trial {i}: {_shown(dict(trial), 200)})",
                    }
                )
    if errors:
        raise SweepError(errors)
    return specs


def pack_key(spec: JobSpec) -> str:
    """Trials with the same key can train as one stacked computation: what they must share (the data
    and its order, the network's shape and activations, batch size, dtype, device, input scale). The
    shuffle order comes from the seed when mini-batches are shuffled, so the seed counts then."""
    t = spec.training
    shared = {
        "dataset_id": spec.dataset_id,
        "validation_dataset_id": spec.validation_dataset_id,
        "model": spec.model.model_dump(mode="json"),
        "batch_size": t.batch_size,
        "shuffle": t.shuffle,
        "dtype": t.dtype,
        "device": spec.device,
        "scale": spec.preprocess.scale,
        "order_seed": t.seed if (t.batch_size is not None and t.shuffle) else None,
    }
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Trial:
    """One trial to write: its overrides, its validated spec, and the bytes it reserves against its
    tenant's artifact quota (workers/artifact_quota.py)."""

    overrides: dict[str, Any]
    spec: JobSpec
    artifact_bytes: int = 0


def default_metric(specs: Sequence[JobSpec]) -> str:
    """val_loss when every trial has a validation set, else loss."""
    return "val_loss" if specs and all(s.validation_dataset_id for s in specs) else "loss"


class SweepNotFound(LookupError):
    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"No sweep with id '{sweep_id}'.")
        self.sweep_id = sweep_id


class SweepConflict(Exception):
    """delete_sweep refused: a trial (`job_id`) is still queued, running or cancelling."""

    def __init__(self, sweep_id: str, job_id: str, status: str, trial: int) -> None:
        super().__init__(
            f"Sweep '{sweep_id}' still has trial {trial} (job '{job_id}') {status}; only a sweep whose trials "
            f"have all finished can be deleted. Cancel it first (POST /v1/sweeps/{sweep_id}/cancel), then "
            "delete it once its trials have stopped."
        )
        self.sweep_id = sweep_id
        self.job_id = job_id
        self.status = status


# create_job.lua's whole text (lib.lua's helpers included) becomes a function the sweep script calls once
# per trial: one place says how a job is created.
_CREATE_SWEEP = Script(
    "create_sweep",
    "local function CREATE_JOB(KEYS, ARGV)\n"
    + script("create_job").source
    + "\nend\n"
    + (files("dnnq.workers") / "lua" / "create_sweep.lua").read_text(encoding="utf-8"),
)


# delete_job.lua likewise, run once per trial by delete_sweep.lua: a trial goes as DELETE /v1/jobs deletes it.
_DELETE_SWEEP = Script(
    "delete_sweep",
    "local function DELETE_JOB(KEYS, ARGV)\n"
    + script("delete_job").source
    + "\nend\n"
    + (files("dnnq.workers") / "lua" / "delete_sweep.lua").read_text(encoding="utf-8"),
)


def _plan(
    tenant: str,
    base: dict[str, Any],
    trials: Sequence[Trial],
    grid: Any,
    max_unfinished: int | None,
    datasets: Sequence[str] = (),
    idempotency_key: str | None = None,
    max_artifact_bytes: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list, list]:
    """The sweep's record, its trials' records, and create_sweep's keys and args (`datasets`: ids that
    must exist, checked in the script)."""
    sweep_id = uuid.uuid4().hex
    created = time.time()
    packs: dict[str, list[int]] = {}
    records, script_keys, trial_args = [], [], []
    per = 0
    for i, trial in enumerate(trials):
        spec = trial.spec
        pack = pack_key(spec)
        packs.setdefault(pack, []).append(i)
        record, job_keys, args = jobs._new_job(
            tenant,
            spec.model_dump(mode="json"),
            queue_for(spec),
            spec.dataset_id,
            spec.validation_dataset_id,
            None,
            extra={
                "sweep_id": sweep_id,
                "sweep_trial": str(i),
                "sweep_overrides": json.dumps(trial.overrides, sort_keys=True),
                "sweep_pack": pack,
            },
            artifact_bytes=trial.artifact_bytes,
        )
        per = len(job_keys)
        records.append(record)
        script_keys += job_keys
        trial_args.append(json.dumps([str(a) for a in args]))
    sweep = {
        "id": sweep_id,
        "tenant": tenant,
        "created_at": jobs.now_iso(),
        "base": json.dumps(base, sort_keys=True),
        "grid": json.dumps(grid, sort_keys=True) if grid is not None else "",
        "n_trials": str(len(trials)),
        "job_ids": json.dumps([r["id"] for r in records]),
        "overrides": json.dumps([t.overrides for t in trials], sort_keys=True),
        "packs": json.dumps(packs, sort_keys=True),
        "metric": default_metric([t.spec for t in trials]),
    }
    if idempotency_key is not None:  # the reservation naming this sweep: deleting the sweep removes it too
        sweep["idempotency_key"] = idempotency_key
    all_keys = [
        keys.sweep(sweep_id),
        keys.tenant_sweeps(tenant),
        keys.unfinished(tenant),
        keys.tenant_artifact_bytes(tenant),
        *script_keys,
    ]
    all_keys += [keys.dataset(d) for d in datasets]
    args = [
        int(max_unfinished or 0),
        created,
        per,
        sweep_id,
        json.dumps([x for pair in sweep.items() for x in pair]),
        int(max_artifact_bytes or 0),
        sum(t.artifact_bytes for t in trials),
        *trial_args,
    ]
    return sweep, records, all_keys, args


def _datasets_of(trials: Sequence[Trial], require_datasets: bool) -> list[str]:
    """Every dataset the trials name, once each, in trial order (what create_sweep.lua checks)."""
    if not require_datasets:
        return []
    named = (d for t in trials for d in (t.spec.dataset_id, t.spec.validation_dataset_id) if d is not None)
    return list(dict.fromkeys(named))


def _created(
    tenant: str,
    sweep: dict[str, Any],
    outcome: Any,
    datasets: Sequence[str] = (),
    trials: Sequence[Trial] = (),
    quota: int | None = None,
) -> dict[str, Any]:
    if isinstance(outcome, list):  # ['over', bytes in use]: nothing was written
        need, what = sum(t.artifact_bytes for t in trials), f"This sweep's {len(trials)} trials together"
        fewer = "fewer trials, a smaller network or fewer epochs"
        raise jobs.ArtifactQuotaExceeded(need, int(outcome[1]), int(quota or 0), what, fewer)
    if outcome <= -2:  # the (-1 - outcome)-th dataset is gone: nothing was written
        raise jobs.DatasetMissing([datasets[-2 - int(outcome)]])
    if outcome >= 0:
        raise TooManyUnfinished(tenant, int(outcome))
    return decode_sweep(sweep)


def create_sweep(
    r: Any,
    *,
    tenant: str,
    base: dict[str, Any],
    trials: Sequence[Trial],
    grid: Any = None,
    max_unfinished: int | None = None,
    require_datasets: bool = False,
    idempotency_key: str | None = None,
    max_artifact_bytes: int | None = None,
) -> dict[str, Any]:
    """Write the sweep and every trial (queued, in the outbox) in one atomic step; the decoded sweep.
    The caller sends each trial's message, then marks them sent (as after jobs.create_job). Raises
    TooManyUnfinished, writing nothing, when the trials would take the tenant past max_unfinished, and
    with require_datasets (the route) DatasetMissing, writing nothing, when a dataset a trial names does
    not exist, checked in the same step (a dataset deleted at the same moment is never used).
    idempotency_key: the Redis key of the Idempotency-Key reservation naming the sweep (deleted with it).
    With max_artifact_bytes, ArtifactQuotaExceeded, writing nothing, when the trials' artifact_bytes together
    would take the tenant's reserved artifact bytes past it (as jobs.create_job checks one job)."""
    datasets = _datasets_of(trials, require_datasets)
    sweep, _, all_keys, args = _plan(
        tenant, base, trials, grid, max_unfinished, datasets, idempotency_key, max_artifact_bytes
    )
    return _created(tenant, sweep, _CREATE_SWEEP(r, all_keys, args), datasets, trials, max_artifact_bytes)


async def create_sweep_async(
    ar: Any,
    *,
    tenant: str,
    base: dict[str, Any],
    trials: Sequence[Trial],
    grid: Any = None,
    max_unfinished: int | None = None,
    require_datasets: bool = False,
    idempotency_key: str | None = None,
    max_artifact_bytes: int | None = None,
) -> dict[str, Any]:
    """create_sweep on a redis.asyncio client (the POST /v1/sweeps route)."""
    datasets = _datasets_of(trials, require_datasets)
    sweep, _, all_keys, args = _plan(
        tenant, base, trials, grid, max_unfinished, datasets, idempotency_key, max_artifact_bytes
    )
    outcome = await _CREATE_SWEEP.run_async(ar, all_keys, args)
    return _created(tenant, sweep, outcome, datasets, trials, max_artifact_bytes)


# ---------------------------------------------------------------------------------------------
# Reading


_SWEEP_JSON = ("base", "grid", "job_ids", "overrides", "packs")


def decode_sweep(raw: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v == "":
            out[k] = None
        elif k in _SWEEP_JSON:
            out[k] = json.loads(v)
        elif k == "n_trials":
            out[k] = int(v)
        else:
            out[k] = v
    return out


def _visible(raw: Mapping[str, str], tenant: str | None) -> dict[str, Any] | None:
    if not raw or (tenant is not None and raw.get("tenant") != tenant):
        return None
    return decode_sweep(raw)


def _sweep_key(sweep_id: Any) -> str | None:
    return keys.sweep(sweep_id) if isinstance(sweep_id, str) and keys.ID_RE.match(sweep_id) else None


def get_sweep(r: Any, sweep_id: str, tenant: str | None = None) -> dict[str, Any] | None:
    """The decoded sweep, or None when absent, malformed, or another tenant's."""
    key = _sweep_key(sweep_id)
    return None if key is None else _visible(r.hgetall(key), tenant)


async def get_sweep_async(ar: Any, sweep_id: str, tenant: str | None = None) -> dict[str, Any] | None:
    key = _sweep_key(sweep_id)
    return None if key is None else _visible(await ar.hgetall(key), tenant)


def _queue_trial_reads(pipe: Any, job_ids: Sequence[str], last_epoch: bool) -> None:
    for job_id in job_ids:
        pipe.hgetall(keys.job(job_id))
        if last_epoch:
            pipe.lindex(keys.job_history(job_id), -1)


def _trial_results(found: list, job_ids: Sequence[str], last_epoch: bool) -> list[dict[str, Any] | None]:
    """Each trial's decoded record (None once deleted), with `last_epoch`: its history's last entry,
    from Redis's list or, once the history moved to the artifact store, the copy the move kept in the
    record (`history_last`: finish.lua, move_history.lua)."""
    step = 2 if last_epoch else 1
    out: list[dict[str, Any] | None] = []
    for i in range(len(job_ids)):
        raw = found[i * step]
        if not raw:
            out.append(None)
            continue
        job = decode(raw)
        kept = job.pop("history_last", None)
        if last_epoch:
            entry = found[i * step + 1] or kept
            job["last_epoch"] = json.loads(entry) if entry else None
        out.append(job)
    return out


# Reading a moved history's file can fail like this: the trial then stays unranked, its curve empty.
_STORE_ERRORS = (KeyError, OSError, EOFError, ValueError)


def _unkept(job: Mapping[str, Any] | None) -> bool:
    """A trial whose history moved before the move kept its last entry in the record."""
    return job is not None and bool(job.get("history_stored")) and job.get("last_epoch") is None


def _stored_last_epochs(store: ArtifactStore, job_ids: Sequence[str], records: list) -> None:
    for job_id, job in zip(job_ids, records, strict=True):
        if _unkept(job):
            try:
                job["last_epoch"] = history_store.last_entry(store, job_id)
            except _STORE_ERRORS:
                continue


def trial_jobs(
    r: Any, sweep: Mapping[str, Any], last_epoch: bool = True, store: ArtifactStore | None = None
) -> list[dict[str, Any] | None]:
    """The sweep's trials' job records in trial order (one pipelined round trip). With `store`, a trial
    whose history moved before the record kept its last entry has it read from the file's last line."""
    job_ids = sweep["job_ids"]
    pipe = r.pipeline(transaction=False)
    _queue_trial_reads(pipe, job_ids, last_epoch)
    records = _trial_results(pipe.execute(), job_ids, last_epoch)
    if last_epoch and store is not None:
        _stored_last_epochs(store, job_ids, records)
    return records


async def trial_jobs_async(
    ar: Any, sweep: Mapping[str, Any], last_epoch: bool = True, store: ArtifactStore | None = None
) -> list[dict[str, Any] | None]:
    job_ids = sweep["job_ids"]
    pipe = ar.pipeline(transaction=False)
    _queue_trial_reads(pipe, job_ids, last_epoch)
    records = _trial_results(await pipe.execute(), job_ids, last_epoch)
    if last_epoch and store is not None and any(_unkept(job) for job in records):
        await asyncio.to_thread(_stored_last_epochs, store, job_ids, records)  # an object store's GETs
    return records


def list_sweeps(r: Any, tenant: str, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """The tenant's sweeps, newest first, and how many it has."""
    index = keys.tenant_sweeps(tenant)
    pipe = r.pipeline(transaction=False)
    pipe.zcard(index)
    pipe.zrevrange(index, offset, offset + limit - 1)
    total, ids = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for sweep_id in ids:
        pipe.hgetall(keys.sweep(sweep_id))
    return [decode_sweep(raw) for raw in pipe.execute() if raw], int(total)


def metric_value(job: Mapping[str, Any] | None, metric: str) -> float | None:
    """The metric at the trial's last completed epoch; None when it has none (or a non-finite one)."""
    entry = (job or {}).get("last_epoch") or {}
    value = entry.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_trial(trial_records: Sequence[Mapping[str, Any] | None], metric: str) -> int | None:
    """The index of the best succeeded trial by `metric` (METRICS says which way is better); None until
    a trial has succeeded with a value. Ties go to the lower index."""
    lower = METRICS[metric]
    best: tuple[float, int] | None = None
    for i, job in enumerate(trial_records):
        if job is None or job.get("status") != jobs.Status.SUCCEEDED.value:
            continue
        value = metric_value(job, metric)
        if value is None:
            continue
        score = (value if lower else -value, i)
        if best is None or score < best:
            best = score
    return None if best is None else best[1]


def cancel_sweep(r: Any, sweep: Mapping[str, Any]) -> list[str]:
    """Ask every unfinished trial to stop (jobs.request_cancel: queued -> cancelled, running ->
    cancelling); returns the ids it changed. Finished and deleted trials are left as they are."""
    changed = []
    for job_id in sweep["job_ids"]:
        try:
            jobs.request_cancel(r, job_id)
        except (jobs.JobConflict, jobs.JobNotFound):
            continue
        changed.append(job_id)
    return changed


_STATE_FIELDS = ("status", "progress", "error", "metrics")


def _states(found: list) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for values in found:
        if values[0] is None:  # the record is gone (deleted)
            out.append(None)
        else:
            out.append(decode({k: v for k, v in zip(_STATE_FIELDS, values, strict=True) if v is not None}))
    return out


def trial_states(r: Any, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Each trial's status, progress, error and metrics (None once deleted): one pipelined HMGET each,
    what a sweep listing or stream needs, without the specs and histories."""
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), _STATE_FIELDS)
    return _states(pipe.execute())


async def trial_states_async(ar: Any, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    pipe = ar.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), _STATE_FIELDS)
    return _states(await pipe.execute())


async def trial_history_lengths(
    ar: Any, job_ids: Sequence[str], records: Sequence[Mapping[str, Any] | None]
) -> list[int]:
    """Each trial's number of completed epochs, reading none of them: the record's count for a moved
    history, else the list's length (one pipelined LLEN each)."""
    pipe = ar.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.llen(keys.job_history(job_id))
    lengths = await pipe.execute()
    return [int((job or {}).get("history_stored") or n) for job, n in zip(records, lengths, strict=True)]


async def trial_histories_async(
    ar: Any,
    store: ArtifactStore,
    job_ids: Sequence[str],
    records: Sequence[dict[str, Any] | None],
    shrink: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
) -> list[list[dict[str, Any]]]:
    """Each trial's completed epochs, from Redis or the artifact store, read one trial at a time and
    passed through `shrink` (a thinning) at once: at most one trial's whole history is held at a time,
    however many trials the sweep has. A moved history whose file is gone reads as empty."""
    out = []
    for job_id, job in zip(job_ids, records, strict=True):
        try:
            entries = await jobs.get_history_async(ar, job_id, store=store, job=job)
        except _STORE_ERRORS:
            entries = []
        out.append(shrink(entries) if shrink is not None else entries)
        del entries  # the whole history goes before the next trial's is read
    return out


# ---------------------------------------------------------------------------------------------
# Deleting


def delete_sweep(r: Any, store: ArtifactStore, sweep_id: str, tenant: str | None = None) -> None:
    """Delete a sweep whose trials have all finished: every trial exactly as jobs.delete_job deletes a
    job (record, history, indexes, Idempotency-Key entry, then artifacts) and the sweep's record and
    tenant index entry, in one script (all or nothing). A sweep's record also goes by itself with its
    last trial (delete_job.lua), so retention leaves no empty sweep.

    Raises SweepNotFound (absent, malformed id, or another tenant's when `tenant` is given) or
    SweepConflict (a trial still queued, running or cancelling: cancel the sweep first)."""
    sweep = get_sweep(r, sweep_id, tenant)
    if sweep is None:
        raise SweepNotFound(str(sweep_id))
    job_ids: list[str] = sweep["job_ids"]
    script_keys = [keys.sweep(sweep_id), keys.tenant_sweeps(sweep["tenant"])]
    for job_id in job_ids:
        script_keys += jobs.delete_job_keys(job_id)
    per = len(jobs.delete_job_keys(job_ids[0])) if job_ids else 0
    grace_ms = int(trash.TRASH_GRACE_SECONDS * 1000)
    answer = _DELETE_SWEEP(r, script_keys, [sweep_id, tenant or "", per, grace_ms, *job_ids])
    if answer[0] == "missing":
        raise SweepNotFound(sweep_id)
    if answer[0] == "conflict":
        raise SweepConflict(sweep_id, answer[1], answer[2], job_ids.index(answer[1]))
    for job_id, moving in zip(job_ids, answer[1:], strict=True):
        if moving:  # '' = the trial was gone already
            jobs.deleted_files(r, store, job_id, moving)
