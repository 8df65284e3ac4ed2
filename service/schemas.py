"""Request bodies and response views of the HTTP API (JobSpec itself comes from workers.spec)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dnnq.service.synthetic import SyntheticName

__all__ = [
    "FiniteJSONResponse",
    "PredictRequest",
    "SyntheticRequest",
    "dataset_view",
    "finite",
    "finite_json",
    "job_view",
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
        "timings": job.get("timings"),
        "links": links,
    }
    if history is not None:
        view["history"] = history
    return view
