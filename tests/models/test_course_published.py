"""The course's own unit test cases and the outputs it publishes for them.

Each case rebuilds its inputs exactly as the course's test-case helpers do (the global
``np.random.seed(k)`` followed by ``randn`` draws, i.e. ``RandomState(k)``) and compares with the
printed expected outputs, to the 8 digits the course shows. No data files needed.
"""

import numpy as np
import pytest

from dnnq.models import (
    compute_cost,
    initialize_parameters_deep,
    linear_activation_forward,
    model_backward,
    model_forward,
    update_parameters,
)

from .conftest import host, on

DIGITS = {"rtol": 0, "atol": 5e-8}  # the course prints 8 decimals


def test_initialize_parameters_deep_seed_3(xp):
    params = initialize_parameters_deep([5, 4, 3], seed=3, init="small", xp=xp, dtype="float64")
    np.testing.assert_allclose(
        host(params["W1"])[0], [0.01788628, 0.0043651, 0.00096497, -0.01863493, -0.00277388], **DIGITS
    )
    np.testing.assert_allclose(host(params["W2"])[0], [-0.01185047, -0.0020565, 0.01486148, 0.00236716], **DIGITS)
    assert host(params["b1"]).shape == (4, 1) and not host(params["b1"]).any()


def test_linear_activation_forward_seed_2(xp):
    rs = np.random.RandomState(2)
    A_prev, W, b = rs.randn(3, 2), rs.randn(1, 3), rs.randn(1, 1)
    A, _ = linear_activation_forward(on(xp, A_prev), on(xp, W), on(xp, b), "sigmoid")
    np.testing.assert_allclose(host(A), [[0.96890023, 0.11013289]], **DIGITS)
    A, _ = linear_activation_forward(on(xp, A_prev), on(xp, W), on(xp, b), "relu")
    np.testing.assert_allclose(host(A), [[3.43896131, 0.0]], **DIGITS)


def test_model_forward_2hidden_seed_6(xp):
    rs = np.random.RandomState(6)
    X = rs.randn(5, 4)
    params = {
        "W1": rs.randn(4, 5),
        "b1": rs.randn(4, 1),
        "W2": rs.randn(3, 4),
        "b2": rs.randn(3, 1),
        "W3": rs.randn(1, 3),
        "b3": rs.randn(1, 1),
    }
    AL, caches = model_forward(on(xp, X), {k: on(xp, v) for k, v in params.items()})
    np.testing.assert_allclose(host(AL), [[0.03921668, 0.70498921, 0.19734387, 0.04728177]], **DIGITS)
    assert len(caches) == 3


def test_compute_cost_published(xp):
    cost = compute_cost(on(xp, [[0.8, 0.9, 0.4]]), on(xp, [[1, 1, 0]]))
    assert isinstance(cost, float) and cost == pytest.approx(0.2797765635793422, abs=1e-15)


def test_model_backward_seed_3_with_a_hand_built_cache(xp):
    """The course passes AL = randn (not sigmoid(Z2)): backward must start from dAL, not assume AL = s(Z)."""
    rs = np.random.RandomState(3)
    AL, Y = rs.randn(1, 2), np.array([[1, 0]])
    A0, W1, b1, Z1 = rs.randn(4, 2), rs.randn(3, 4), rs.randn(3, 1), rs.randn(3, 2)
    A1, W2, b2, Z2 = rs.randn(3, 2), rs.randn(1, 3), rs.randn(1, 1), rs.randn(1, 2)
    caches = [((on(xp, A0), on(xp, W1), on(xp, b1)), on(xp, Z1)), ((on(xp, A1), on(xp, W2), on(xp, b2)), on(xp, Z2))]
    grads = model_backward(on(xp, AL), on(xp, Y), caches)
    np.testing.assert_allclose(
        host(grads["dW1"]),
        [
            [0.41010002, 0.07807203, 0.13798444, 0.10502167],
            [0.0, 0.0, 0.0, 0.0],
            [0.05283652, 0.01005865, 0.01777766, 0.0135308],
        ],
        **DIGITS,
    )
    np.testing.assert_allclose(host(grads["db1"]), [[-0.22007063], [0.0], [-0.02835349]], **DIGITS)
    np.testing.assert_allclose(
        host(grads["dA1"]), [[0.12913162, -0.44014127], [-0.14175655, 0.48317296], [0.01663708, -0.05670698]], **DIGITS
    )
    assert host(grads["dA0"]).shape == (4, 2)


def test_update_parameters_seed_2(xp):
    rs = np.random.RandomState(2)
    params = {"W1": rs.randn(3, 4), "b1": rs.randn(3, 1), "W2": rs.randn(1, 3), "b2": rs.randn(1, 1)}
    rs = np.random.RandomState(3)  # the course reseeds before drawing the gradients
    grads = {"dW1": rs.randn(3, 4), "db1": rs.randn(3, 1), "dW2": rs.randn(1, 3), "db2": rs.randn(1, 1)}
    out = update_parameters({k: on(xp, v) for k, v in params.items()}, {k: on(xp, v) for k, v in grads.items()}, 0.1)
    np.testing.assert_allclose(
        host(out["W1"]),
        [
            [-0.59562069, -0.09991781, -2.14584584, 1.82662008],
            [-1.76569676, -0.80627147, 0.51115557, -1.18258802],
            [-1.0535704, -0.86128581, 0.68284052, 2.20374577],
        ],
        **DIGITS,
    )
    np.testing.assert_allclose(host(out["b1"]), [[-0.04659241], [-1.28888275], [0.53405496]], **DIGITS)
    np.testing.assert_allclose(host(out["W2"]), [[-0.55569196, 0.0354055, 1.32964895]], **DIGITS)
    np.testing.assert_allclose(host(out["b2"]), [[-0.84610769]], **DIGITS)
