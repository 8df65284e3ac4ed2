"""TrainConfig.estimate_memory_bytes counts what fit and the scoring after it hold: the validation set's
data and its chunk's buffers too. Validation's chunk shrinks for wide layers so that it stays within what
is counted; ordinary networks keep their 8,192-row chunks (and so their val_loss to the bit)."""

from __future__ import annotations

import numpy as np
import pytest

from dnnq.models import TrainConfig, fit, training
from dnnq.models import config as model_config

MNIST_LIKE = {"layer_dims": [784, 256, 128, 10], "output": "softmax", "optimizer": "adam", "batch_size": 128}


def test_the_estimate_grows_with_the_validation_set():
    cfg = TrainConfig(**MNIST_LIKE)
    alone = cfg.estimate_memory_bytes(60000)
    assert cfg.estimate_memory_bytes(60000, 0) == alone
    small, large = cfg.estimate_memory_bytes(60000, 1000), cfg.estimate_memory_bytes(60000, 10000)
    assert large - small >= 9000 * (784 + 10) * 4  # the validation set's data, at least
    assert small - alone >= 1000 * (784 + 10) * 4


def test_the_estimate_counts_a_full_chunk_of_scoring_for_wide_layers():
    """A 16,384-unit layer on 65,536 rows: scoring's chunk is counted at the budget, not at one batch."""
    cfg = TrainConfig(layer_dims=[2, 16384, 1], optimizer="adam", batch_size=64)
    row = model_config.scoring_row_bytes(cfg.layer_dims, 4)
    rows = model_config.chunk_rows(row, 65536)
    assert cfg.estimate_memory_bytes(65536) >= rows * row > model_config.EVAL_BUDGET_BYTES - row


@pytest.mark.parametrize(
    "cfg, n, capacity",
    [
        (TrainConfig(layer_dims=[12288, 20, 7, 5, 1], optimizer="gd"), 209, 2**30),  # the course's cat model
        (TrainConfig(**MNIST_LIKE), 60000, 2**30),
        (TrainConfig(**MNIST_LIKE, dtype="float64"), 60000, 2**30),
    ],
)
def test_ordinary_jobs_still_fit_a_1_gib_worker(cfg, n, capacity):
    assert cfg.estimate_memory_bytes(n, n // 6) < capacity


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ordinary_widths_keep_validations_8192_row_chunks(dtype):
    cfg = TrainConfig(**MNIST_LIKE, dtype=dtype)
    assert training._validation_chunk(cfg, 20000) == 8192
    assert training._validation_chunk(cfg, 300) == 300
    wide = TrainConfig(layer_dims=[2, 16384, 1], dtype=dtype)
    chunk = training._validation_chunk(wide, 20000)
    assert chunk < 8192
    assert chunk * model_config.validation_row_bytes(wide.layer_dims, np.dtype(dtype).itemsize) <= (
        model_config.EVAL_BUDGET_BYTES
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output, n_y", [("softmax", 3), ("sigmoid", 1), ("linear", 2)])
def test_validation_in_many_small_chunks_gives_the_same_results(monkeypatch, dtype, output, n_y):
    """A budget of a few rows per chunk: the same training (to the bit: validation does not touch it), the
    same val_accuracy (a count), val_loss equal to its chunks' float rounding."""
    rng = np.random.default_rng(5)
    X, X_val = rng.normal(size=(12, 600)), rng.normal(size=(12, 3000))
    if output == "softmax":
        Y, Y_val = rng.integers(0, 3, size=(1, 600)), rng.integers(0, 3, size=(1, 3000))
    elif output == "sigmoid":
        Y, Y_val = (X[:1] > 0).astype(float), (X_val[:1] > 0).astype(float)
    else:
        Y, Y_val = X[:2] * 0.5, X_val[:2] * 0.5
    cfg = TrainConfig(layer_dims=[12, 32, 16, n_y], output=output, epochs=3, batch_size=64, dtype=dtype, l2=0.01)
    assert training._validation_chunk(cfg, 3000) == 3000  # one chunk
    whole = fit(X, Y, cfg, X_val=X_val, Y_val=Y_val, path="textbook")

    item = 4 if dtype == "float32" else 8
    monkeypatch.setattr(model_config, "EVAL_BUDGET_BYTES", 37 * model_config.validation_row_bytes(cfg.layer_dims, item))
    assert training._validation_chunk(cfg, 3000) == 37  # 82 chunks
    chunked = fit(X, Y, cfg, X_val=X_val, Y_val=Y_val, path="textbook")

    for k, v in whole.parameters.items():
        np.testing.assert_array_equal(chunked.parameters[k], v)
    assert [h.loss for h in chunked.history] == [h.loss for h in whole.history]
    assert [h.val_accuracy for h in chunked.history] == [h.val_accuracy for h in whole.history]
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose([h.val_loss for h in chunked.history], [h.val_loss for h in whole.history], rtol=rtol)
