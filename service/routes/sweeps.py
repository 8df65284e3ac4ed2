"""/v1/sweeps: many trials of one base spec in one request; each trial an ordinary job.

A submit validates every trial as a whole JobSpec against its datasets and the limits (the job desk's
own checks, service/jobdesk.py), writes the sweep and all its trials in one Lua step
(workers/sweeps.py: queued, in the outbox), then hands every trial's message to the desk's TaskSender
in one go: its thread publishes them in one batch and marks them sent. A crash in between leaves them
in the outbox for the workers' sweeper, as for a single submit; a message sent twice is claimed once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dnnq.service import sse
from dnnq.service.deps import AsyncRds, Rds, Settings, Store, Tenant
from dnnq.service.errors import Problem, field_error, problems
from dnnq.service.idempotency import reserve
from dnnq.service.jobdesk import JobDesk
from dnnq.service.schemas import FiniteJSONResponse, sse_response, thin_history
from dnnq.service.sweep_schemas import (
    MetricName,
    SweepAccepted,
    SweepList,
    SweepRequest,
    SweepTrialEvent,
    SweepView,
    counts_of,
    summary_view,
    sweep_status,
    sweep_view,
    trial_view,
)
from dnnq.workers import jobs, sweeps
from dnnq.workers.artifact_quota import max_artifact_bytes
from dnnq.workers.spec import SpecError, queue_for, to_train_config

__all__ = ["router"]

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

# Epochs per trial in a sweep view with history=thin: 64 trials' curves on one chart need no more.
THIN_TRIAL_HISTORY = 200
# The sweeps' batches of sends in flight (the event loop keeps only weak references to tasks).
_SENDING: set[asyncio.Future] = set()


async def get_desk(request: Request) -> JobDesk:
    return request.app.state.job_desk


Desk = Annotated[JobDesk, Depends(get_desk)]


def sweep_not_found(sweep_id: str) -> Problem:
    shown = sweep_id if len(sweep_id) <= 64 else sweep_id[:64] + "..."
    return Problem(404, f"No sweep with id '{shown}'.")


def _in_trial(problem: Problem, index: int) -> Problem:
    """A job desk's Problem about one spec field, said of trial `index`."""
    errors = [{**e, "field": f"trials[{index}].{e['field']}"} for e in problem.errors or []]
    return Problem(problem.status, f"trials[{index}]: {problem.detail}", errors=errors or None, headers=problem.headers)


async def _checked_trials(desk: JobDesk, ar: Any, body: SweepRequest, tenant: str, max_trials: int) -> list:
    """Every trial expanded, validated as a JobSpec, against its datasets and the limits; a 422 names
    the trial index and field of the first that fails."""
    base = body.base.model_dump(mode="json")
    try:
        overrides = sweeps.expand(body.grid, body.trials, max_trials)
        specs = sweeps.trial_specs(base, overrides)
    except sweeps.SweepError as exc:
        raise Problem(422, str(exc), errors=exc.errors) from None
    trials = []
    for i, spec in enumerate(specs):
        meta = await desk.dataset(ar, spec.dataset_id, tenant)
        if meta is None:
            raise field_error(f"trials[{i}].dataset_id", f"no dataset with id '{spec.dataset_id}'; upload one first.")
        val_meta = None
        if spec.validation_dataset_id is not None:
            val_meta = await desk.dataset(ar, spec.validation_dataset_id, tenant)
            if val_meta is None:
                raise field_error(
                    f"trials[{i}].validation_dataset_id", f"no dataset with id '{spec.validation_dataset_id}'."
                )
        try:
            cfg = to_train_config(spec, meta, val_meta)
            await desk._check_limits(ar, spec, cfg, meta, val_meta)  # the job desk's limits: one place for them
        except SpecError as exc:
            raise field_error(f"trials[{i}].{exc.field}", exc.message) from None
        except Problem as problem:
            raise _in_trial(problem, i) from None
        trials.append(sweeps.Trial(overrides[i], spec, max_artifact_bytes(cfg, meta.get("classes"))))
    return trials


def _too_many(settings: Any, unfinished: int, n_trials: int) -> Problem:
    return Problem(
        429,
        f"This sweep's {n_trials} trials would take this tenant past its limit of "
        f"{settings.max_queued_jobs_per_tenant} queued or running jobs (DNNQ_MAX_QUEUED_JOBS_PER_TENANT; it has "
        f"{unfinished}); wait for some to finish, cancel some, or sweep fewer values.",
        headers={"Retry-After": "10"},
    )


def _dataset_gone(desk: JobDesk, trials: list, exc: jobs.DatasetMissing) -> Problem:
    """The 422 for a dataset deleted between the checks and the write, naming the first trial that uses
    it; the desk forgets its cached record (as JobDesk._create does for a submit)."""
    for dataset_id in exc.dataset_ids:
        desk.dataset_records.pop(dataset_id, None)
    for i, trial in enumerate(trials):
        for field in ("dataset_id", "validation_dataset_id"):
            if getattr(trial.spec, field) in exc.dataset_ids:
                return field_error(
                    f"trials[{i}].{field}", f"{exc} It was deleted; upload it again with POST /v1/datasets."
                )
    return field_error("base.dataset_id", f"{exc} It was deleted; upload it again with POST /v1/datasets.")


@router.post("", status_code=202, response_model=SweepAccepted, responses=problems(413, 429))
async def create_sweep(
    body: SweepRequest,
    desk: Desk,
    settings: Settings,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> FiniteJSONResponse:
    """Queue one job per trial: a grid's every combination, or a list of overrides of the base spec."""
    ar = desk.async_redis.get()
    reservation = None
    if idempotency_key is not None:
        digest = hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        reservation, replay_id = await run_in_threadpool(
            reserve,
            desk.r,
            tenant=tenant,
            route="sweeps",
            key=idempotency_key,
            body_sha256=digest,
            ttl=settings.idempotency_ttl_seconds,
        )
        if replay_id is not None and (sweep := await sweeps.get_sweep_async(ar, replay_id, tenant)) is not None:
            records = await sweeps.trial_jobs_async(ar, sweep, store=desk.store)
            return _accepted(sweep_view(sweep, records, sweep["metric"]))
    try:
        trials = await _checked_trials(desk, ar, body, tenant, settings.max_sweep_trials)
        try:
            sweep = await sweeps.create_sweep_async(
                ar,
                tenant=tenant,
                base=body.base.model_dump(mode="json"),
                trials=trials,
                grid=body.grid,
                max_unfinished=settings.max_queued_jobs_per_tenant,
                require_datasets=True,
                idempotency_key=reservation.redis_key if reservation else None,
                max_artifact_bytes=settings.max_artifact_bytes_per_tenant,
            )
        except sweeps.TooManyUnfinished as exc:
            raise _too_many(settings, exc.unfinished, len(trials)) from None
        except jobs.ArtifactQuotaExceeded as exc:  # no trial written: the quota holds all of them or none
            raise Problem(413, str(exc)) from None
        except jobs.DatasetMissing as exc:  # deleted since the desk cached its record: as a submit answers
            raise _dataset_gone(desk, trials, exc) from None
    except BaseException:  # a refused sweep frees its key: the client may fix the body and retry
        if reservation:
            await run_in_threadpool(reservation.release)
        raise
    # Every trial's message goes to the sender's thread at once (one batch, marked sent with one ZREM). The
    # 202 does not wait for them: the trials are already queued in the outbox, so a send that fails, or an
    # API that dies first, leaves them to the sweeper, exactly as a single submit's failed send does.
    sends = [desk.sender.send(job_id, queue_for(t.spec)) for job_id, t in zip(sweep["job_ids"], trials, strict=True)]
    sending = asyncio.ensure_future(asyncio.gather(*sends))
    _SENDING.add(sending)
    sending.add_done_callback(_SENDING.discard)
    if reservation:
        await run_in_threadpool(reservation.complete, sweep["id"])
    pack_of = {i: pack for pack, indexes in (sweep.get("packs") or {}).items() for i in indexes}
    queued = [
        {"status": "queued", "spec": t.spec.model_dump(mode="json"), "sweep_pack": pack_of.get(i)}
        for i, t in enumerate(trials)
    ]
    return _accepted(sweep_view(sweep, queued, sweep["metric"]))


def _accepted(view: dict[str, Any]) -> FiniteJSONResponse:
    return FiniteJSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


@router.get("", response_model=SweepList)
def list_sweeps(
    r: Rds,
    tenant: Tenant,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FiniteJSONResponse:
    """This tenant's sweeps, newest first, each with its trials counted by status."""
    page, total = sweeps.list_sweeps(r, tenant, offset, limit)
    states = sweeps.trial_states(r, [job_id for sweep in page for job_id in sweep["job_ids"]])
    items, at = [], 0
    for sweep in page:
        items.append(summary_view(sweep, states[at : at + len(sweep["job_ids"])]))
        at += len(sweep["job_ids"])
    return FiniteJSONResponse({"items": items, "total": total, "offset": offset, "limit": limit})


def _metric(sweep: dict[str, Any], metric: str | None) -> str:
    if metric is None:
        return str(sweep["metric"])
    if metric.startswith("val_") and sweep["metric"] != "val_loss":
        raise field_error(
            "metric", f"this sweep's trials have no validation set, so no {metric}; use metric=loss or accuracy."
        )
    return metric


@router.get("/{sweep_id}", response_model=SweepView, responses=problems(404))
async def get_sweep(
    sweep_id: str,
    ar: AsyncRds,
    store: Store,
    settings: Settings,
    tenant: Tenant,
    metric: Annotated[
        MetricName | None,
        Query(
            description="Rank the trials by this, at their last epoch (default val_loss with a validation set, "
            "else loss; the answer says which)"
        ),
    ] = None,
    history: Annotated[Literal["none", "thin", "full"], Query(description="Each trial's epochs too")] = "none",
) -> FiniteJSONResponse:
    """The trials with status, progress and metrics, and the best succeeded trial by `metric`."""
    sweep = await sweeps.get_sweep_async(ar, sweep_id, tenant)
    if sweep is None:
        raise sweep_not_found(sweep_id)
    chosen = _metric(sweep, metric)
    # Ranking reads each trial's last epoch from Redis (a moved history's is kept in its record): no file.
    records = await sweeps.trial_jobs_async(ar, sweep, store=store)
    histories = None
    if history == "full":
        await _check_full_size(ar, settings, sweep, records)
    if history != "none":
        # one trial at a time, each thinned as soon as it is read: one whole history in memory, not all
        thin = (lambda h: thin_history(h, THIN_TRIAL_HISTORY)) if history == "thin" else None
        histories = await sweeps.trial_histories_async(ar, store, sweep["job_ids"], records, thin)
    return FiniteJSONResponse(sweep_view(sweep, records, chosen, histories))


async def _check_full_size(ar: Any, settings: Any, sweep: dict[str, Any], records: list) -> None:
    """history=full holds every trial's every epoch in this process at once (the API serves every
    tenant): past DNNQ_SWEEP_HISTORY_FULL_MAX_ENTRIES epochs in all, a 422 says where to read them."""
    total = sum(await sweeps.trial_history_lengths(ar, sweep["job_ids"], records))
    cap = settings.sweep_history_full_max_entries
    if total > cap:
        raise field_error(
            "history",
            f"history=full would answer {total} epochs over this sweep's {len(sweep['job_ids'])} trials, over the "
            f"limit of {cap} (DNNQ_SWEEP_HISTORY_FULL_MAX_ENTRIES); use history=thin, or fetch each trial's "
            "/v1/jobs/{id}?history=full (its links.job).",
        )


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepView, responses=problems(404))
def cancel_sweep(sweep_id: str, r: Rds, store: Store, tenant: Tenant) -> FiniteJSONResponse:
    """Cancel every unfinished trial: queued ones at once, running ones at their next epoch's end."""
    sweep = sweeps.get_sweep(r, sweep_id, tenant)
    if sweep is None:
        raise sweep_not_found(sweep_id)
    sweeps.cancel_sweep(r, sweep)
    records = sweeps.trial_jobs(r, sweep, store=store)
    return FiniteJSONResponse(sweep_view(sweep, records, str(sweep["metric"])), status_code=202)


@router.get(
    "/{sweep_id}/events",
    name="stream_sweep_events",
    response_class=StreamingResponse,
    responses={200: sse_response({"trial": SweepTrialEvent, "end": "SweepSummary"}), **problems(404, 429)},
)
async def stream_sweep_events(
    sweep_id: str, request: Request, ar: AsyncRds, settings: Settings, tenant: Tenant
) -> StreamingResponse:
    """Server-Sent Events: a `trial` event (index, job_id, status, progress, metrics, error) for every
    trial when the stream opens and whenever one's status or progress changes, then `end` (the sweep's
    summary) once every trial has finished. Events carry no ids and Last-Event-ID is ignored: each
    (re)connection starts with every trial's current state, so a client that reconnects misses nothing."""
    sweep = await sweeps.get_sweep_async(ar, sweep_id, tenant)
    if sweep is None:
        raise sweep_not_found(sweep_id)

    sent: dict[int, Any] = {}

    async def one_round() -> tuple[list[str], bool]:
        states = await sweeps.trial_states_async(ar, sweep["job_ids"])
        out = []
        for i, job in enumerate(states):
            view = trial_view(i, sweep["job_ids"][i], sweep["overrides"][i], job)
            key = (view["status"], json.dumps(view["progress"], sort_keys=True))
            if sent.get(i) != key:
                sent[i] = key
                out.append(
                    sse.event(
                        "trial", {k: view[k] for k in ("index", "job_id", "status", "progress", "metrics", "error")}
                    )
                )
        if sweep_status(counts_of(states)) == "finished":
            return [*out, sse.event("end", summary_view(sweep, states))], True
        return out, False

    return sse.polled_stream(request, settings, one_round, tenant)
