"""Predict's memory is bounded by the request, not by the model's width. A model
with one wide hidden layer used to hold rows x width activations (twice: Z and A) at once; a model
whose weights are over DNNQ_MAX_PREDICT_MODEL_BYTES is a 409 before they are read."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tests.service.test_api import assert_problem, live_worker, make_client  # noqa: F401  (fixture)
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


def test_weights_over_the_model_limit_are_a_409_that_says_what_to_do(api_settings, store, wide_job):
    weights_bytes = store.get(f"jobs/{wide_job}/weights.npz")
    assert len(weights_bytes) > 2**18
    inputs = {"inputs": [[0.0, 1.0]]}
    with make_client(api_settings, max_predict_model_bytes=len(weights_bytes) - 1) as small:
        resp = small.post(f"/v1/jobs/{wide_job}/predict", json=inputs)
    assert_problem(resp, 409, "DNNQ_MAX_PREDICT_MODEL_BYTES", f"/v1/jobs/{wide_job}/weights")
    with make_client(api_settings, max_predict_model_bytes=len(weights_bytes)) as enough:
        assert enough.post(f"/v1/jobs/{wide_job}/predict", json=inputs).status_code == 200
