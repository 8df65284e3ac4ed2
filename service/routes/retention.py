"""DELETE /v1/jobs/{id}, /v1/datasets/{id} and /v1/sweeps/{id}: a finished job, an unused dataset, or a
sweep whose trials have all finished, with their files.

Each is one Lua script in the workers' state machine (jobs.delete_job, datasets.delete_dataset,
sweeps.delete_sweep), so a worker finishing or claiming the job, or a submit naming the dataset, at the
same moment sees it whole or not at all. Finished jobs also go by themselves after DNNQ_RETENTION_DAYS
(the workers' sweeper); a sweep's record goes with its last trial, whichever way that trial is deleted.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from dnnq.service.deps import Rds, Store, Tenant
from dnnq.service.errors import Problem, problems
from dnnq.service.jobdesk import job_not_found
from dnnq.workers import datasets, jobs, sweeps

router = APIRouter(tags=["retention"])


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted: its record, history and files are gone."}, **problems(404, 409)},
)
def delete_job(job_id: str, r: Rds, store: Store, tenant: Tenant) -> Response:
    """Delete a finished job (succeeded, failed or cancelled): its record, history and artifacts.
    A queued or running job is a 409: cancel it first (POST /v1/jobs/{id}/cancel)."""
    try:
        jobs.delete_job(r, store, job_id, tenant)
    except jobs.JobNotFound:
        raise job_not_found(job_id) from None
    except jobs.JobConflict as exc:
        raise Problem(409, str(exc)) from None
    return Response(status_code=204)


@router.delete(
    "/v1/datasets/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted: its record and file are gone."}, **problems(404, 409)},
)
def delete_dataset(dataset_id: str, request: Request, r: Rds, store: Store, tenant: Tenant) -> Response:
    """Delete a dataset and its file. While a queued or running job uses it: 409 (wait, or cancel the job)."""
    try:
        datasets.delete_dataset(r, store, dataset_id, tenant)
    except datasets.DatasetNotFound:
        raise Problem(404, f"No dataset with id '{dataset_id}'.") from None
    except datasets.DatasetInUse as exc:
        raise Problem(409, str(exc)) from None
    request.app.state.job_desk.dataset_records.pop(dataset_id, None)  # this process's submit cache
    return Response(status_code=204)


@router.delete(
    "/v1/sweeps/{sweep_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted: the sweep's record and every trial's job (record, history, files) are gone."},
        **problems(404, 409),
    },
)
def delete_sweep(sweep_id: str, r: Rds, store: Store, tenant: Tenant) -> Response:
    """Delete a sweep whose trials have all finished: every trial as DELETE /v1/jobs/{id} deletes a job,
    then the sweep. A trial still queued or running is a 409: cancel the sweep first
    (POST /v1/sweeps/{id}/cancel)."""
    try:
        sweeps.delete_sweep(r, store, sweep_id, tenant)
    except sweeps.SweepNotFound:
        shown = sweep_id if len(sweep_id) <= 64 else sweep_id[:64] + "..."
        raise Problem(404, f"No sweep with id '{shown}'.") from None
    except sweeps.SweepConflict as exc:
        raise Problem(409, str(exc)) from None
    return Response(status_code=204)
