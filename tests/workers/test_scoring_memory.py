"""The memory a job takes after submit stays within TrainConfig.estimate_memory_bytes, the number the API
checks against the worker's memory: fit, its validation and the scoring of the trained weights, measured
with tracemalloc (NumPy reports its arrays to it). Scoring's chunks shrink for wide layers, and its
accuracies are the same whatever the chunk."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dnnq.models import config as model_config
from dnnq.models import fit, initialize_parameters_deep, predict
from dnnq.workers.inputs import ScoringRows
from dnnq.workers.spec import JobSpec, to_train_config


@pytest.fixture(scope="module", autouse=True)
def warmed_up():
    # the engine's kernels compile on a process's first fit: their compiler's memory is not the job's
    from dnnq.models.warmup import warm_up

    warm_up()


def _spec(hidden: list[int], output: str = "sigmoid", **training) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset_id": "a" * 24,
            "model": {"hidden_layers": hidden, "output": output},
            "training": training,
            "preprocess": {"scale": 0.5},
        }
    )


def _stored(m: int, n_x: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A binary dataset as stored: (m, n_x) float32 rows and (m, 1) labels."""
    X = np.random.default_rng(seed).normal(size=(m, n_x)).astype(np.float32)
    return X, (X[:, :1] > 0).astype(np.float32)


def _meta(X: np.ndarray) -> dict:
    return {"id": "a" * 24, "n_features": X.shape[1], "n_examples": X.shape[0], "label_kind": "binary"}


def _inputs(spec: JobSpec, cfg, stored: tuple) -> tuple[np.ndarray, np.ndarray]:
    """As JobInputs holds them: compute dtype, scaled, features first."""
    return spec.preprocess.apply(stored[0].astype(cfg.dtype)).T, stored[1].T


def _peak_of_the_job(spec: JobSpec, train: tuple, val: tuple | None) -> tuple[int, int]:
    """(traced peak bytes, the estimate) of what the worker does with a claimed job: the compute-dtype
    inputs (workers/inputs.py's _arrays), fit, then scoring the weights on each set. The stored rows
    are made before tracing: scoring reads them back from the store, a copy of the data and no chunk."""
    cfg = to_train_config(spec, _meta(train[0]), None if val is None else _meta(val[0]))
    n_val = 0 if val is None else val[0].shape[0]
    tracemalloc.start()
    try:
        X, Y = _inputs(spec, cfg, train)
        X_val, Y_val = (None, None) if val is None else _inputs(spec, cfg, val)
        result = fit(X, Y, cfg, X_val=X_val, Y_val=Y_val)
        for rows in (train, val):
            if rows is not None:
                ScoringRows(rows[0], rows[1][:, 0], spec, 65536).accuracy(result.parameters, spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, cfg.estimate_memory_bytes(train[0].shape[0], n_val)


def test_the_reviewers_wide_job_stays_within_its_estimate():
    """One hidden layer of 1,024 units, batch 64, 65,536 rows: scoring them in one float64 chunk took
    ~470x the estimate (856 MiB for 1.83 MiB)."""
    peak, estimate = _peak_of_the_job(_spec([1024], epochs=1, batch_size=64), _stored(65536, 2, 0), None)
    assert peak <= estimate, f"peak {peak / 2**20:.1f} MiB over the estimate {estimate / 2**20:.1f} MiB"


def test_a_wide_job_with_a_validation_set_stays_within_its_estimate():
    """Validation's chunks (8,192 rows of every layer's buffers) and the validation set's data count too."""
    spec = _spec([2048], epochs=1, batch_size=64)
    peak, estimate = _peak_of_the_job(spec, _stored(2048, 2, 1), _stored(16384, 2, 2))
    assert peak <= estimate, f"peak {peak / 2**20:.1f} MiB over the estimate {estimate / 2**20:.1f} MiB"


def test_scoring_chunks_shrink_with_the_width_within_the_budget():
    rows = ScoringRows(*_stored(10, 2, 0), _spec([4]), 65536)
    narrow = {"W1": np.ones((4, 2), np.float32), "b1": np.zeros((4, 1), np.float32)}
    narrow |= {"W2": np.ones((1, 4), np.float32), "b2": np.zeros((1, 1), np.float32)}
    wide = {"W1": np.ones((16384, 2), np.float32), "b1": np.zeros((16384, 1), np.float32)}
    wide |= {"W2": np.ones((1, 16384), np.float32), "b2": np.zeros((1, 1), np.float32)}
    assert rows.rows_per_chunk(narrow) == 65536  # ordinary weights: the chunk it always had
    chunk = rows.rows_per_chunk(wide)
    assert 1 <= chunk < 1024
    assert chunk * model_config.scoring_row_bytes([2, 16384, 1], 4) <= model_config.EVAL_BUDGET_BYTES


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_scoring_gives_the_same_accuracy_in_many_small_chunks(monkeypatch, dtype, output):
    """Each row's label depends on that row alone: a budget of a few rows per chunk gives the accuracy of
    one chunk of all the rows (the old chunking) to the bit, and predict's on them all at once."""
    rng = np.random.default_rng(3)
    n_y = 3 if output == "softmax" else 1
    X = rng.normal(size=(5000, 8)).astype(np.float32)
    truth = rng.integers(0, max(2, n_y), size=5000)
    spec = _spec([64, 32], output)
    cfg = model_config.TrainConfig(layer_dims=[8, 64, 32, n_y], output=output, dtype=dtype, seed=4)
    params = initialize_parameters_deep(cfg.layer_dims, seed=4, init="he", dtype=dtype)
    one_chunk = ScoringRows(X, truth, spec, 5000)
    assert one_chunk.rows_per_chunk(params) == 5000
    whole = one_chunk.accuracy(params, spec)

    monkeypatch.setattr(model_config, "EVAL_BUDGET_BYTES", 50 * model_config.scoring_row_bytes(cfg.layer_dims, 8))
    small = ScoringRows(X, truth, spec, 65536)
    assert small.rows_per_chunk(params) <= 100  # 50 or more chunks
    assert small.accuracy(params, spec) == whole
    labels = predict(params, spec.preprocess.apply(X.astype(np.float64)).T, output=output).reshape(-1)
    assert whole == np.count_nonzero(labels == truth) / 5000


def test_scoring_a_stored_dataset_maps_its_rows_rather_than_copying_them(redis_client, store):
    """Scoring runs while the job's training arrays are still held: reading the stored rows whole put a
    second copy of the data beside them, which the estimate does not count. They are mapped from the
    stored file now (workers/datasets.py map_arrays), and chunks of them are what the heap holds."""
    from dnnq.workers import datasets
    from dnnq.workers.inputs import accuracy, scoring_rows

    X = np.random.default_rng(5).normal(size=(20_000, 500))  # 80 MB stored (float64)
    meta = datasets.save_dataset(
        redis_client, store, tenant="public", name="big", source="test", X=X, Y=(X[:, 0] > 0).astype(int),
        label_kind="binary",
    )  # fmt: skip
    spec = _spec([3])
    params = initialize_parameters_deep([500, 3, 1], seed=1, init="he", dtype="float64")
    tracemalloc.start()
    try:
        got = accuracy(params, store, spec, meta, chunk=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, f"scoring took {peak / 2**20:.1f} MiB for {X.nbytes / 2**20:.0f} MiB of rows"
    rows = scoring_rows(store, spec, meta)
    assert isinstance(rows._X, np.memmap) and not rows._X.flags.writeable
    labels = predict(params, spec.preprocess.apply(X).T, output="sigmoid").reshape(-1)
    assert got == np.count_nonzero(labels == (X[:, 0] > 0)) / 20_000
