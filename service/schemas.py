"""Request bodies and response views of the HTTP API (JobSpec itself comes from workers.spec).

The response models below are the API's typed contract: each route names one as its `response_model`,
so the OpenAPI schema (and a client generated from it) types every answer. Most routes build their
body with a view function here (job_view, dataset_view) and return it as a FiniteJSONResponse, which
FastAPI does not validate (the hot paths, and the fast lane below FastAPI, skip that cost); the models
document exactly what those views hold (extra keys are refused), and tests/service/test_openapi.py
validates live answers, the fast lane's included, against the schema so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from dnnq.service.synthetic import SyntheticName
from dnnq.workers.spec import JobSpec
from dnnq.workers.status import Status

__all__ = [
    "CancelAccepted",
    "DatasetDetail",
    "DatasetList",
    "DatasetPreview",
    "DatasetView",
    "FiniteJSONResponse",
    "Health",
    "HistoryEntry",
    "JobAccepted",
    "JobLinks",
    "JobList",
    "JobMetrics",
    "JobProgress",
    "JobStatusEvent",
    "JobTimings",
    "JobView",
    "ModelDescription",
    "OverrideValue",
    "PredictRequest",
    "Readiness",
    "StoreCheck",
    "SyntheticRequest",
    "dataset_view",
    "finite",
    "finite_json",
    "job_view",
    "sse_response",
    "thin_history",
]

DATASET_FIELDS = (
    "id",
    "name",
    "source",
    "n_examples",
    "n_features",
    "n_outputs",
    "n_classes",
    "classes",
    "label_kind",
    "sha256",
    "size_bytes",
    "created_at",
)


def finite(value: Any) -> Any:
    """A copy of a JSON-like value with every NaN or infinity replaced by None. A record written by an
    older version may hold them, and JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def finite_json(content: Any, **options: Any) -> str:
    """json.dumps that always writes valid JSON: non-finite numbers become null. Tries the plain dump
    first, so a clean value (all but a poisoned record) is walked once, by the encoder."""
    try:
        return json.dumps(content, allow_nan=False, **options)
    except ValueError:
        return json.dumps(finite(content), allow_nan=False, **options)


class FiniteJSONResponse(JSONResponse):
    """A JSONResponse that answers null for a non-finite number instead of failing to render (a 500)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(finite(content))


class SyntheticRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: SyntheticName
    n_samples: int = Field(default=500, ge=2, description="Examples to generate.")
    noise: float = Field(default=0.2, ge=0, le=10, description="Gaussian noise (blobs: the cluster std).")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    n_classes: int = Field(default=3, ge=2, le=100, description="spiral and blobs only.")
    n_features: int = Field(default=2, ge=1, le=10_000, description="blobs only.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # NaN and infinities pass here and the route refuses them in one numpy check with one error, where
    # allow_inf_nan=False would list an error per value (an error body far larger than the request).
    inputs: list[list[float]] = Field(min_length=1, description="Examples as rows, raw (before preprocess.scale).")


# --- response models: what the routes answer ---------------------------------------------------------
# A number a record holds may be null: the finite views answer null for NaN and infinities (finite()).


# A key a view leaves out rather than sending null: optional, and not null in the schema.
Absent = SkipJsonSchema[None]

# A value a sweep's trial sets: a number, a name, a flag, or a list of layer sizes (model.hidden_layers).
OverrideValue = int | float | str | bool | list[int] | None

# The job record's fields that name a trial's sweep (workers/sweeps.py writes them), shown as they are.
SWEEP_FIELDS = ("sweep_id", "sweep_trial", "sweep_overrides", "sweep_pack")


class _View(BaseModel):
    """A response body. Keys the views do not send are refused (additionalProperties: false), so a key
    added to a view without its field here fails the schema test instead of going undocumented."""

    model_config = ConfigDict(extra="forbid")


class JobProgress(_View):
    epoch: int = Field(description="Epochs completed so far (0 before training starts).")
    epochs: int | None = Field(description="Epochs the job trains for.")
    loss: float | None = Field(description="The last completed epoch's loss; null before the first.")


class JobMetrics(_View):
    """Scores of the weights the job ships (or stopped with), computed as a client predicting would."""

    final_loss: float | None
    train_accuracy: float | None = Field(description="null for regression (output 'linear').")
    validation_accuracy: float | None = Field(description="null without a validation set, or for regression.")


class JobTimings(_View):
    """Seconds the worker spent, by phase (fit's own timings, plus loading and the total)."""

    # Named fields for the phases a worker records today; a worker may add phases (each a number of seconds).
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {"type": "number"}})

    load_s: float | Absent = Field(default=None, description="Reading the job's datasets.")
    setup_s: float | Absent = Field(default=None, description="Building the network and its buffers.")
    train_s: float | Absent = Field(default=None, description="The training epochs.")
    validation_s: float | Absent = Field(default=None, description="Scoring the validation set after each epoch.")
    epoch_mean_s: float | Absent = Field(default=None, description="train_s / epochs trained.")
    total_s: float | Absent = Field(default=None, description="From claim to stored weights.")


class JobLinks(_View):
    """Where to go next; weights_*, model and predict once the job has succeeded."""

    self: str
    events: str = Field(description="Server-Sent Events: epochs and status changes.")
    cancel: str
    weights_npz: str | Absent = None
    weights_safetensors: str | Absent = None
    weights_onnx: str | Absent = None
    model: str | Absent = None
    predict: str | Absent = None
    sweep: str | Absent = Field(default=None, description="The sweep this job is a trial of (sweep trials only).")


class HistoryEntry(_View):
    """One completed epoch."""

    epoch: int = Field(description="1-based.")
    loss: float | None
    accuracy: float | None = Field(description="null for regression.")
    val_loss: float | None = Field(description="null without a validation set.")
    val_accuracy: float | None


class JobView(_View):
    """A job: its status, progress, outcome and links (GET /v1/jobs/{job_id})."""

    id: str = Field(description="32 hex characters.")
    status: Status
    queue: str = Field(description="The Celery queue it was sent to: 'default' or 'gpu'.")
    progress: JobProgress
    metrics: JobMetrics | None = Field(description="Set when training ends (succeeded or cancelled).")
    device: str | None = Field(description="Where it trains: 'cpu' or 'gpu:N'; null before it starts.")
    error: str | None = Field(description="Why it failed; null unless failed.")
    created_at: str = Field(description="ISO 8601 UTC.")
    started_at: str | None
    finished_at: str | None
    dataset_id: str
    validation_dataset_id: str | None
    spec: JobSpec = Field(description="The job's spec as submitted, defaults filled in.")
    attempts: int = Field(description="Times training started (a worker that died costs one).")
    resumed_from_epoch: int | None = Field(description="The checkpoint's epoch the last attempt resumed from.")
    released_at: str | None = Field(
        description="The last time a worker shutting down handed it back (no attempt spent)."
    )
    release_reason: str | None
    celery_task_id: str | None = Field(
        description="The Celery task that last delivered it to a worker (Flower, `celery events`); null "
        "before a worker claims it.",
    )
    timings: JobTimings | None = Field(description="Set when training ends.")
    sweep_id: str | Absent = Field(default=None, description="The sweep this job is a trial of (sweep trials only).")
    sweep_trial: int | Absent = Field(default=None, description="Its index among the sweep's trials.")
    sweep_overrides: dict[str, OverrideValue] | Absent = Field(
        default=None, description="What this trial changes in the sweep's base spec (dotted paths)."
    )
    sweep_pack: str | Absent = Field(
        default=None, description="Trials with the same pack can train together as one computation."
    )
    links: JobLinks
    history: list[HistoryEntry] | Absent = Field(
        default=None,
        description="Per-epoch history: absent with history=none (and in lists); thinned to at most "
        "DNNQ_HISTORY_FULL_MAX entries, first and last kept, unless history=full.",
    )


class JobAccepted(JobView):
    """The 202 of POST /v1/jobs: the new job, queued, with an empty history; a replayed Idempotency-Key
    answers the original job, without history."""


class CancelAccepted(JobView):
    """The 202 of POST /v1/jobs/{job_id}/cancel: the job after the request (cancelled when it was still
    queued; cancelling while a worker trains it, until the next epoch ends)."""


class JobList(_View):
    """A page of the tenant's jobs, newest first, without histories."""

    items: list[JobView]
    total: int = Field(description="Jobs matching the filter, all pages.")
    offset: int
    limit: int


LabelKind = Literal["binary", "integer", "onehot", "continuous"]


class DatasetView(_View):
    """A stored dataset's record."""

    id: str = Field(description="24 hex characters (derived from the tenant and the content).")
    name: str
    source: str = Field(description="'upload:<file name>' or 'synthetic:<generator>'.")
    n_examples: int
    n_features: int
    n_outputs: int = Field(description="Columns of Y.")
    n_classes: int = Field(description="0 for continuous targets.")
    classes: list[str | int | float] | None = Field(description="Class labels (index i is class i), when known.")
    label_kind: LabelKind
    sha256: str = Field(description="Of the stored arrays.")
    size_bytes: int
    created_at: str = Field(description="ISO 8601 UTC.")


class DatasetPreview(_View):
    X: list[list[float]] = Field(
        description="The first examples, as rows (truncated to 20 features unless preview=full)."
    )
    Y: list[list[float]] = Field(description="Their targets, as rows.")
    features_truncated: bool


class DatasetDetail(DatasetView):
    """A dataset's record with a preview of its first examples (GET /v1/datasets/{dataset_id})."""

    preview: DatasetPreview | None = Field(description="null when the stored arrays cannot be read.")
    preview_error: str | Absent = Field(default=None, description="Why there is no preview (present only then).")


class DatasetList(_View):
    """A page of the tenant's datasets, newest first."""

    items: list[DatasetView]
    total: int
    offset: int
    limit: int


class ModelPreprocessing(_View):
    scale: float | None = Field(description="Multiply raw inputs by this before the first layer (null: none).")
    note: str | None


class ModelVersions(_View):
    dnnq: str
    numpy: str


class ModelDescription(_View):
    """How to use the trained weights (the job's model.json): A_l = g_l(W_l @ A_{l-1} + b_l) per layer,
    on features x examples inputs multiplied by preprocessing.scale."""

    format: str = Field(description="'dnnq-model/1'.")
    job_id: str | None = None
    dataset_id: str | None = None
    layer_sizes: list[int] = Field(description="Units per layer, input first.")
    activations: list[str] = Field(description="One per layer after the input; the last is the output's.")
    hidden_activation: str
    output: str
    label_kind: LabelKind | None = None
    layout: str | None = None
    preprocessing: ModelPreprocessing | None = None
    classes: list[str | int | float] | None = None
    metrics: JobMetrics | None = None
    dtype: str | None = Field(default=None, description="The weights' dtype as trained.")
    versions: ModelVersions | None = None


class Health(_View):
    status: Literal["ok"]


class StoreCheck(_View):
    """The artifact store's part of /readyz."""

    location: str = Field(description="Where the artifacts live (a folder, or an object store's bucket).")
    ok: bool = Field(description="Whether it answered.")


class Readiness(_View):
    """/readyz: ready when Redis answers, a worker is alive and the artifact store answers; `missing`
    names what is not."""

    status: Literal["ready", "not ready"]
    workers: int = Field(description="Live workers (heartbeats).")
    missing: list[str] = Field(description="What is absent, each with how to fix it; empty when ready.")
    store: StoreCheck = Field(description="The artifact store: where, and whether it answered.")


# --- Server-Sent Events: each event's data, documented beside the stream ---------------------------------
# OpenAPI 3.1 has no way to type an event stream's items, so the 200 of a stream says text/event-stream
# and lists each event's data schema under the extension `x-events` (event name -> schema, whose $refs
# name this API's components); tests/service/test_openapi.py validates real events against them.


class JobStatusEvent(_View):
    """The data of a job stream's `status` event."""

    status: Status
    progress: JobProgress | None


def sse_response(events: dict[str, type[BaseModel] | str]) -> dict[str, Any]:
    """A `responses=` entry for a 200 event stream: event name -> its data's model (inlined; the models
    it nests are components already) or the name of a component (a route's answer model)."""
    described: dict[str, Any] = {}
    for name, model in events.items():
        if isinstance(model, str):
            described[name] = {"$ref": f"#/components/schemas/{model}"}
        else:
            described[name] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            described[name].pop("$defs", None)
    return {
        "description": "Server-Sent Events: " + ", ".join(f"`{name}`" for name in events),
        "content": {"text/event-stream": {"schema": {"type": "string"}, "x-events": described}},
    }


def dataset_view(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in DATASET_FIELDS}


def thin_history(history: list[dict], keep: int) -> list[dict]:
    """At most `keep` entries spread evenly, always the first and the final epoch."""
    if len(history) <= keep:
        return history
    idx = np.unique(np.linspace(0, len(history) - 1, keep).round().astype(int))
    return [history[i] for i in idx]


def job_view(job: dict[str, Any], history: list[dict] | None, *, base: str = "/v1/jobs") -> dict[str, Any]:
    """The public shape of a job record; `history` None omits the field."""
    jid = job["id"]
    links = {
        "self": f"{base}/{jid}",
        "events": f"{base}/{jid}/events",
        "cancel": f"{base}/{jid}/cancel",
    }
    if job.get("status") == "succeeded":
        for fmt in job.get("artifacts") or {}:
            if fmt in ("npz", "safetensors", "onnx"):
                links[f"weights_{fmt}"] = f"{base}/{jid}/weights?format={fmt}"
        links["model"] = f"{base}/{jid}/model"
        links["predict"] = f"{base}/{jid}/predict"
    if job.get("sweep_id"):
        links["sweep"] = f"/v1/sweeps/{job['sweep_id']}"
    view = {
        "id": jid,
        "status": job.get("status"),
        "queue": job.get("queue"),
        "progress": job.get("progress")
        or {"epoch": 0, "epochs": (job.get("spec") or {}).get("training", {}).get("epochs"), "loss": None},
        "metrics": job.get("metrics"),
        "device": job.get("device"),
        "error": job.get("error"),
        "created_at": job.get("created_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "dataset_id": job.get("dataset_id"),
        "validation_dataset_id": job.get("validation_dataset_id"),
        "spec": job.get("spec"),
        "attempts": job.get("attempts") or 0,
        "resumed_from_epoch": job.get("resumed_from_epoch"),
        # the last time a worker shutting down handed the job back (no attempt spent), and why
        "released_at": job.get("released_at"),
        "release_reason": job.get("release_reason"),
        "celery_task_id": job.get("celery_task_id"),
        "timings": job.get("timings"),
        "links": links,
    }
    if job.get("sweep_id"):  # a sweep's trial: which sweep, which trial, what it changes
        view.update({k: job.get(k) for k in SWEEP_FIELDS})
    if history is not None:
        view["history"] = history
    return view
