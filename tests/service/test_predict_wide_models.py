"""Predict's memory is bounded by the request, not by the model's width. A model
with one wide hidden layer used to hold rows x width activations (twice: Z and A) at once."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tests.service.test_api import live_worker  # noqa: F401  (fixture)
from tests.service.test_numbers_and_limits import succeeded_job

WIDTH, ROWS = 16384, 2000  # unchunked: 2000 x 16384 x 8 bytes x 2 = 500 MiB of activations


@pytest.fixture
def wide_job(client, redis_client, store, live_worker) -> str:  # noqa: F811
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2))
    weights = {
        "W1": rng.normal(size=(WIDTH, 2)),
        "b1": np.zeros((WIDTH, 1)),
        "W2": rng.normal(size=(1, WIDTH)) / WIDTH,
        "b2": np.zeros((1, 1)),
    }
    return succeeded_job(
        client,
        redis_client,
        store,
        X,
        (X[:, 0] > 0).astype(int),
        {"hidden_layers": [WIDTH], "output": "sigmoid"},
        weights,
    )


def test_predict_on_a_wide_model_stays_within_the_forward_budget(client, wide_job):
    inputs = np.random.default_rng(1).normal(size=(ROWS, 2)).tolist()
    tracemalloc.start()
    try:
        resp = client.post(f"/v1/jobs/{wide_job}/predict", json={"inputs": inputs})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == ROWS
    assert peak < 192 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB (the forward budget is 64 MiB)"


def test_chunked_forward_equals_one_pass():
    from dnnq.models import predict as model_predict
    from dnnq.service.routes import predict as route

    rng = np.random.default_rng(2)
    params = {
        "W1": rng.normal(size=(300, 5)),
        "b1": rng.normal(size=(300, 1)),
        "W2": rng.normal(size=(4, 300)),
        "b2": rng.normal(size=(4, 1)),
    }
    X = rng.normal(size=(1001, 5))
    whole = model_predict(params, X.T, hidden_activation="relu", output="softmax", proba=True)
    saved = route.FORWARD_BUDGET_BYTES
    route.FORWARD_BUDGET_BYTES = 100_000  # a few dozen rows per chunk
    try:
        chunked = route._forward_in_chunks(model_predict, params, X, "relu", "softmax")
    finally:
        route.FORWARD_BUDGET_BYTES = saved
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)
