"""The ONNX export computes the same function as the trained network.

Each graph is run with onnx's own reference evaluator and compared with a
NumPy forward pass written here from the textbook formulas (features x
examples), and with models.predict(..., proba=True) once models/ has it.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from dnnq.models import HIDDEN_ACTIVATIONS as HIDDEN
from dnnq.models import OUTPUTS
from dnnq.workers.onnx_export import onnx_bytes


def _act(name: str, Z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(Z, 0.0)
    if name == "leaky_relu":
        return np.where(Z > 0, Z, 0.01 * Z)
    if name == "tanh":
        return np.tanh(Z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-Z))
    if name == "softmax":  # over classes: axis 0 in the features x examples layout
        E = np.exp(Z - Z.max(axis=0, keepdims=True))
        return E / E.sum(axis=0, keepdims=True)
    if name == "linear":
        return Z
    raise AssertionError(name)


def numpy_forward(parameters, X_rows, hidden, output, scale=None):
    """Textbook forward pass; returns AL transposed to (N, n_out)."""
    A_prev = X_rows.T.astype(np.float64)  # A0: (n_x, m)
    if scale is not None:  # preprocess.scale: raw inputs multiplied by it, as the worker trains
        A_prev = A_prev * scale
    L = len(parameters) // 2
    for l in range(1, L + 1):
        Z = parameters[f"W{l}"] @ A_prev + parameters[f"b{l}"]  # (n_l, m)
        A_prev = _act(hidden if l < L else output, Z)
    return A_prev.T


def random_parameters(rng, layer_dims):
    params = {}
    for l in range(1, len(layer_dims)):
        params[f"W{l}"] = rng.normal(0, 0.7, (layer_dims[l], layer_dims[l - 1])).astype(np.float32)
        params[f"b{l}"] = rng.normal(0, 0.3, (layer_dims[l], 1)).astype(np.float32)
    return params


def run_onnx(blob: bytes, X_rows: np.ndarray) -> np.ndarray:
    model = onnx.load_from_string(blob)
    (out,) = ReferenceEvaluator(model).run(["probabilities"], {"X": X_rows.astype(np.float32)})
    return out


@pytest.mark.parametrize("hidden,output", list(itertools.product(HIDDEN, OUTPUTS)))
def test_onnx_matches_numpy_forward(hidden, output):
    rng = np.random.default_rng(HIDDEN.index(hidden) * 10 + OUTPUTS.index(output))
    n_out = 3 if output == "softmax" else (2 if output == "linear" else 1)
    layer_dims = [5, 8, 4, n_out]
    params = random_parameters(rng, layer_dims)
    X_rows = rng.normal(0, 1, (17, 5)).astype(np.float32)

    blob = onnx_bytes(params, hidden, output)
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["X"]
    assert [o.name for o in model.graph.output] == ["probabilities"] + ([] if output == "linear" else ["label"])
    layers = sorted(t.name for t in model.graph.initializer if t.name[:1] in "Wb" and t.name[1:].isdigit())
    assert layers == sorted(params)

    got = run_onnx(blob, X_rows)
    expected = numpy_forward({k: v.astype(np.float64) for k, v in params.items()}, X_rows, hidden, output)
    assert got.shape == (17, n_out)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if output == "softmax":
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_scale_is_applied_to_raw_inputs():
    rng = np.random.default_rng(7)
    params = random_parameters(rng, [12, 6, 1])
    X_raw = rng.integers(0, 256, (9, 12)).astype(np.float32)  # pixel-like raw inputs
    scale = 1 / 255

    got = run_onnx(onnx_bytes(params, "relu", "sigmoid", input_scale=scale), X_raw)
    expected = numpy_forward({k: v.astype(np.float64) for k, v in params.items()}, X_raw, "relu", "sigmoid", scale)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The Mul is really there: without it the same raw inputs give other outputs
    # (compared with a linear output, which cannot saturate).
    linear_scaled = run_onnx(onnx_bytes(params, "relu", "linear", input_scale=scale), X_raw)
    linear_raw = run_onnx(onnx_bytes(params, "relu", "linear"), X_raw)
    assert not np.allclose(linear_raw, linear_scaled, rtol=1e-2)


def test_single_layer_network():
    rng = np.random.default_rng(3)
    params = random_parameters(rng, [4, 3])
    X_rows = rng.normal(0, 1, (6, 4)).astype(np.float32)
    got = run_onnx(onnx_bytes(params, "relu", "softmax"), X_rows)
    expected = numpy_forward({k: v.astype(np.float64) for k, v in params.items()}, X_rows, "relu", "softmax")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments_say_what_to_fix():
    params = random_parameters(np.random.default_rng(0), [3, 2, 1])
    with pytest.raises(ValueError, match="'hidden_activation' parameter must be one of") as e:
        onnx_bytes(params, "gelu", "sigmoid")
    assert "Got 'gelu' instead." in str(e.value)
    with pytest.raises(ValueError, match="'output' parameter must be one of"):
        onnx_bytes(params, "relu", "softplus")
    with pytest.raises(ValueError, match="no 'W1'"):
        onnx_bytes({}, "relu", "sigmoid")
    bad = dict(params)
    bad["W2"] = np.zeros((1, 5), np.float32)  # layer 1 has 2 units, not 5
    with pytest.raises(ValueError, match="Layer 2"):
        onnx_bytes(bad, "relu", "sigmoid")
    with pytest.raises(ValueError, match="'input_scale' parameter must be a finite number > 0. Got 0"):
        onnx_bytes(params, "relu", "sigmoid", input_scale=0)


@pytest.mark.parametrize("hidden,output", list(itertools.product(HIDDEN, OUTPUTS)))
def test_onnx_matches_models_predict(hidden, output):
    from dnnq.models import predict

    rng = np.random.default_rng(11)
    n_out = 3 if output == "softmax" else 1
    params = random_parameters(rng, [4, 6, 5, n_out])
    X_rows = rng.normal(0, 1, (10, 4)).astype(np.float32)

    got = run_onnx(onnx_bytes(params, hidden, output), X_rows)
    AL = predict(
        {k: v.astype(np.float64) for k, v in params.items()},
        X_rows.T.astype(np.float64),
        hidden_activation=hidden,
        output=output,
        proba=True,
    )
    np.testing.assert_allclose(got, np.asarray(AL).T, rtol=1e-5, atol=1e-5)
