"""A claimed job's inputs, loaded once: its record, spec, dataset records, training config and arrays;
and the scoring of the trained weights on the same rows, as a client predicting on them would see it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from dnnq.workers import jobs
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.datasets import get_dataset, load_arrays, map_arrays
from dnnq.workers.spec import JobSpec, SpecError, to_train_config

if TYPE_CHECKING:
    from dnnq.models import TrainConfig

__all__ = ["JobInputs", "ScoringRows", "accuracy", "load_inputs", "scoring_rows"]


@dataclass
class JobInputs:
    """What fit needs, and what the outcome is recorded with. Arrays are features-first: (n_x, m), (n_y, m)."""

    record: dict[str, Any]  # the job record
    spec: JobSpec
    meta: dict[str, Any]
    val_meta: dict[str, Any] | None
    cfg: TrainConfig
    X: np.ndarray
    Y: np.ndarray
    X_val: np.ndarray | None
    Y_val: np.ndarray | None


def load_inputs(r: redis.Redis, store: ArtifactStore, job_id: str) -> JobInputs:
    """Read job_id's record and datasets. Raises SpecError when a dataset is gone or no longer fits."""
    job = jobs.get_job(r, job_id)
    if job is None:  # claimed a moment ago: only a deleted record gets here
        raise SpecError("id", f"job '{job_id}' no longer exists.")
    spec = JobSpec.model_validate(job["spec"])
    meta = _dataset(r, spec.dataset_id, "dataset_id")
    val_meta = _dataset(r, spec.validation_dataset_id, "validation_dataset_id") if spec.validation_dataset_id else None
    cfg = to_train_config(spec, meta, val_meta)
    X, Y = _arrays(store, spec, meta, cfg)
    X_val, Y_val = _arrays(store, spec, val_meta, cfg) if val_meta else (None, None)
    return JobInputs(job, spec, meta, val_meta, cfg, X, Y, X_val, Y_val)


def _dataset(r: redis.Redis, dataset_id: str, field: str) -> dict[str, Any]:
    meta = get_dataset(r, dataset_id)
    if meta is None:
        raise SpecError(field, f"dataset '{dataset_id}' no longer exists: upload it again and resubmit.")
    return meta


def _arrays(
    store: ArtifactStore, spec: JobSpec, meta: dict[str, Any], cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Stored examples-first arrays -> features-first (n_x, m) / (n_y, m) views, scaled as the spec says."""
    X, Y = load_arrays(store, meta["id"], meta.get("sha256"))
    X = X.astype(cfg.dtype, copy=False)
    X = spec.preprocess.apply(X)
    if spec.model.output != "softmax" or meta["label_kind"] in ("onehot",):
        Y = Y.astype(cfg.dtype, copy=False)
    return X.T, Y.T


class ScoringRows:
    """A dataset's rows as the predict route sees them (float64, scaled as the spec says), chunk by chunk,
    with their true labels: read once, they score any number of weight sets (a sweep pack's). A dataset
    of one chunk keeps its scaled float64 copy between scorings: no more than one scoring holds anyway.
    ``chunk``: rows per chunk at most; wide weights get fewer (rows_per_chunk)."""

    def __init__(self, X: np.ndarray, truth: np.ndarray, spec: JobSpec, chunk: int) -> None:
        self._X, self.truth, self._spec, self._chunk = X, truth, spec, chunk  # X: (m, n_x) as stored
        self._kept: np.ndarray | None = None

    def rows_per_chunk(self, params: dict[str, np.ndarray]) -> int:
        """The chunk for these weights: within EVAL_BUDGET_BYTES, which TrainConfig.estimate_memory_bytes
        counts for scoring (a fixed row count would take memory in proportion to the layers' width)."""
        from dnnq.models.config import chunk_rows, scoring_row_bytes

        L = len(params) // 2
        dims = [int(params["W1"].shape[1])] + [int(params[f"W{l}"].shape[0]) for l in range(1, L + 1)]
        return chunk_rows(scoring_row_bytes(dims, params["W1"].dtype.itemsize), self._chunk)

    def _chunks(self, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        X, n = self._X, self._X.shape[0]
        if n <= chunk:
            if self._kept is None:
                self._kept = self._spec.preprocess.apply(X.astype(np.float64))
            yield 0, self._kept
            return
        self._kept = None  # kept for narrower weights: beside these chunks it would pass the budget
        for s in range(0, n, chunk):
            yield s, self._spec.preprocess.apply(X[s : s + chunk].astype(np.float64))

    def accuracy(self, params: dict[str, np.ndarray], spec: JobSpec) -> float:
        """Share of the rows models.predict labels correctly with params (spec: the activations). Each
        row's label depends on that row alone, so the chunk size does not change the result."""
        from dnnq.models import predict

        correct = 0
        for s, xb in self._chunks(self.rows_per_chunk(params)):
            with np.errstate(over="ignore"):  # exp overflow in sigmoid saturates to 0/1, which is right
                labels = np.asarray(
                    predict(params, xb.T, hidden_activation=spec.model.hidden_activation, output=spec.model.output)
                )
            correct += int(np.count_nonzero(labels.reshape(-1) == self.truth[s : s + xb.shape[0]]))
        return correct / self._X.shape[0]


def scoring_rows(store: ArtifactStore, spec: JobSpec, meta: dict[str, Any], chunk: int = 65536) -> ScoringRows:
    """Dataset `meta`'s rows for scoring with spec's preprocessing (ScoringRows), X mapped from the stored
    file rather than read: the job's training arrays are still held, and a copy beside them would pass
    the memory the job was admitted with (TrainConfig.estimate_memory_bytes counts scoring's chunks)."""
    X, Y = map_arrays(store, meta["id"], meta.get("sha256"))
    truth = Y.argmax(axis=1) if meta["label_kind"] == "onehot" else Y[:, 0]
    return ScoringRows(X, truth, spec, chunk)


def accuracy(
    params: dict[str, np.ndarray],
    store: ArtifactStore,
    spec: JobSpec,
    meta: dict[str, Any],
    chunk: int = 65536,
    rows: ScoringRows | None = None,
) -> float | None:
    """Share of examples models.predict labels correctly, on float64 inputs scaled as the API's predict
    route scales them (None for regression). ``rows``: meta's ScoringRows when already read (a pack's)."""
    if spec.model.output == "linear":
        return None
    # Read again rather than kept from before training: holding the raw arrays beside fit's compute-dtype
    # copy would cost up to 1.5x the data's memory for the whole run, to save one read at the end.
    return (rows or scoring_rows(store, spec, meta, chunk)).accuracy(params, spec)
