"""/v1/sweeps' request body and response models, and the views that build those bodies.

Like service/schemas.py's job views, the routes build plain dicts here and answer them as
FiniteJSONResponse; the models document exactly what the views hold (extra keys refused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dnnq.service.schemas import OverrideValue, finite
from dnnq.workers import sweeps
from dnnq.workers.spec import JobSpec
from dnnq.workers.status import TERMINAL

__all__ = [
    "MetricName",
    "SweepAccepted",
    "SweepList",
    "SweepRequest",
    "SweepSummary",
    "SweepTrial",
    "SweepTrialEvent",
    "SweepView",
    "counts_of",
    "summary_view",
    "sweep_status",
    "sweep_view",
    "trial_view",
]

MetricName = Literal["val_loss", "loss", "val_accuracy", "accuracy"]
TrialStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled", "deleted"]
SweepStatus = Literal["queued", "running", "finished"]
_DONE = {s.value for s in TERMINAL} | {"deleted"}

# Largest trials list the body model takes at all; DNNQ_MAX_SWEEP_TRIALS (at most this) is the real limit.
MAX_LISTED_TRIALS = 4096


class SweepRequest(BaseModel):
    """A base job spec and either a grid (field -> list of values: every combination is a trial) or a
    list of trials (each an object of field -> value). Fields are named by their path in the spec
    (`training.learning_rate`, `model.hidden_layers`), by their name where only one section has it
    (`learning_rate`, `l2`, `seed`, `epochs`, `hidden_layers`, `batch_size`, `dropout_keep_prob`), or `lr`."""

    model_config = ConfigDict(extra="forbid")

    base: JobSpec = Field(description="The spec every trial starts from (as for POST /v1/jobs).")
    grid: dict[str, Any] | None = Field(
        default=None,
        description="Field -> list of values; the trials are their cartesian product, the first field varying "
        'slowest. Example: {"lr": [0.001, 0.01, 0.1], "seed": [1, 2]} (6 trials).',
    )
    trials: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=MAX_LISTED_TRIALS,
        description='Each trial\'s overrides of the base. Example: [{"lr": 0.1}, {"lr": 0.01, "l2": 0.5}].',
    )


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrialProgress(_View):
    epoch: int = Field(description="Epochs completed (0 before training starts).")
    epochs: int | None
    loss: float | None


class TrialMetrics(_View):
    final_loss: float | None
    train_accuracy: float | None
    validation_accuracy: float | None


class TrialEpoch(_View):
    epoch: int
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None


class TrialLinks(_View):
    job: str = Field(description="The trial's job: its record, history, weights, predict, like any job.")


class SweepTrial(_View):
    """One trial: an ordinary job that names its sweep."""

    index: int
    job_id: str
    overrides: dict[str, OverrideValue] = Field(description="What this trial changes in the base (dotted paths).")
    status: TrialStatus = Field(description="The job's status; 'deleted' once its job was deleted.")
    progress: TrialProgress | None
    metrics: TrialMetrics | None
    error: str | None
    value: float | None = Field(
        default=None, description="The sweep's ranking metric at the trial's last completed epoch."
    )
    best: bool = Field(default=False, description="This is the sweep's best trial (see SweepView.best).")
    pack: str | None = Field(default=None, description="Trials with the same pack could train as one computation.")
    history: list[TrialEpoch] | None = Field(default=None, description="With history=thin or full.")
    links: TrialLinks


class SweepTrialEvent(_View):
    """The data of a sweep stream's `trial` event: one trial's state when the stream opens or changes."""

    index: int
    job_id: str
    status: TrialStatus
    progress: TrialProgress | None
    metrics: TrialMetrics | None
    error: str | None


class SweepLinks(_View):
    self: str
    events: str = Field(description="Server-Sent Events: trial progress and status changes.")
    cancel: str
    dashboard: str = Field(description="The dashboard's page comparing the trials' curves.")


class SweepBest(_View):
    index: int
    job_id: str
    value: float


class SweepView(_View):
    """A sweep: its trials and the best of them (GET /v1/sweeps/{sweep_id})."""

    id: str
    status: SweepStatus = Field(description="finished once every trial is (succeeded, failed, cancelled, deleted).")
    created_at: str
    n_trials: int
    counts: dict[str, int] = Field(description="Trials per status.")
    metric: MetricName = Field(description="The metric `best` and each trial's `value` use.")
    lower_is_better: bool
    best: SweepBest | None = Field(description="The best succeeded trial by `metric`; null until one has a value.")
    base: JobSpec
    grid: dict[str, list[OverrideValue]] | None = Field(description="The grid asked for, by dotted path.")
    packs: dict[str, list[int]] = Field(description="Pack id -> trial indexes that could train together.")
    trials: list[SweepTrial]
    links: SweepLinks


class SweepAccepted(SweepView):
    """The 202 of POST /v1/sweeps: every trial queued (a replayed Idempotency-Key answers the sweep now)."""


class SweepSummary(_View):
    id: str
    status: SweepStatus
    created_at: str
    n_trials: int
    counts: dict[str, int]
    links: SweepLinks


class SweepList(_View):
    """A page of the tenant's sweeps, newest first."""

    items: list[SweepSummary]
    total: int
    offset: int
    limit: int


def _links(sweep_id: str) -> dict[str, str]:
    base = f"/v1/sweeps/{sweep_id}"
    return {
        "self": base,
        "events": f"{base}/events",
        "cancel": f"{base}/cancel",
        "dashboard": f"/static/sweep.html#{sweep_id}",
    }


def _status_of(job: Mapping[str, Any] | None) -> str:
    return "deleted" if job is None else str(job.get("status"))


def counts_of(states: Sequence[Mapping[str, Any] | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in states:
        status = _status_of(job)
        counts[status] = counts.get(status, 0) + 1
    return counts


def sweep_status(counts: Mapping[str, int]) -> str:
    if all(status in _DONE for status in counts):
        return "finished"
    if counts.get("running") or counts.get("cancelling") or any(s in _DONE for s in counts):
        return "running"
    return "queued"


def trial_view(
    index: int,
    job_id: str,
    overrides: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    *,
    metric: str | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec = (job or {}).get("spec") or {}
    progress = (job or {}).get("progress")
    if job is not None and not progress:
        progress = {"epoch": 0, "epochs": (spec.get("training") or {}).get("epochs"), "loss": None}
    view: dict[str, Any] = {
        "index": index,
        "job_id": job_id,
        "overrides": dict(overrides),
        "status": _status_of(job),
        "progress": progress,
        "metrics": (job or {}).get("metrics"),
        "error": (job or {}).get("error"),
        "pack": (job or {}).get("sweep_pack"),
        "links": {"job": f"/v1/jobs/{job_id}"},
    }
    if metric is not None:
        view["value"] = sweeps.metric_value(job, metric)
    if history is not None:
        view["history"] = [
            {k: e.get(k) for k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")} for e in history
        ]
    return view


def sweep_view(
    sweep: Mapping[str, Any],
    records: Sequence[Mapping[str, Any] | None],
    metric: str,
    histories: Sequence[list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """GET /v1/sweeps/{id}'s body from the sweep and its trials' records (jobs with `last_epoch`)."""
    best = sweeps.best_trial(records, metric)
    trials = []
    for i, (job_id, overrides, job) in enumerate(zip(sweep["job_ids"], sweep["overrides"], records, strict=True)):
        view = trial_view(i, job_id, overrides, job, metric=metric, history=None if histories is None else histories[i])
        view["best"] = i == best
        trials.append(view)
    counts = counts_of(records)
    return finite(
        {
            "id": sweep["id"],
            "status": sweep_status(counts),
            "created_at": sweep["created_at"],
            "n_trials": sweep["n_trials"],
            "counts": counts,
            "metric": metric,
            "lower_is_better": sweeps.METRICS[metric],
            "best": None
            if best is None
            else {"index": best, "job_id": sweep["job_ids"][best], "value": trials[best]["value"]},
            "base": sweep["base"],
            "grid": sweeps.expand_names(sweep["grid"]) if sweep.get("grid") else None,
            "packs": sweep.get("packs") or {},
            "trials": trials,
            "links": _links(sweep["id"]),
        }
    )


def summary_view(sweep: Mapping[str, Any], states: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    counts = counts_of(states)
    return {
        "id": sweep["id"],
        "status": sweep_status(counts),
        "created_at": sweep["created_at"],
        "n_trials": sweep["n_trials"],
        "counts": counts,
        "links": _links(sweep["id"]),
    }
