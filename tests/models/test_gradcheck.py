"""Central finite differences against model_backward, every hidden activation x output/loss pair."""

import numpy as np
import pytest

from dnnq.models import HIDDEN_ACTIVATIONS, gradient_check

from .conftest import on


def random_problem(output, seed=0):
    """Random parameters (non-zero biases keep every Z off the relu kink) and matching targets."""
    rng = np.random.default_rng(seed)
    n_y = {"sigmoid": 2, "softmax": 3, "linear": 2}[output]
    dims = [3, 5, 4, n_y]
    params = {}
    for l in range(1, len(dims)):
        params[f"W{l}"] = rng.standard_normal((dims[l], dims[l - 1])) * 0.8
        params[f"b{l}"] = rng.standard_normal((dims[l], 1)) * 0.5
    X = rng.standard_normal((3, 7))
    if output == "sigmoid":
        Y = (rng.random((n_y, 7)) > 0.5).astype(float)
    elif output == "softmax":
        Y = np.eye(n_y)[:, rng.integers(0, n_y, 7)]
    else:
        Y = rng.standard_normal((n_y, 7))
    return params, X, Y


@pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("output", ["sigmoid", "softmax", "linear"])
def test_backward_matches_finite_differences_with_l2(hidden, output):
    params, X, Y = random_problem(output)
    error, grad, approx = gradient_check(params, X, Y, hidden, output, l2=0.7, epsilon=1e-5, return_vectors=True)
    assert np.linalg.norm(grad) > 1e-3  # a real gradient, not all zeros
    assert error < 1e-7, f"{hidden}/{output}: relative error {error}"


def test_gradient_check_detects_a_wrong_gradient(monkeypatch):
    """The check itself can fail: with a broken relu derivative the error is large."""
    import dnnq.models.activations as act

    params, X, Y = random_problem("sigmoid")
    monkeypatch.setitem(act.DERIVATIVES, "relu", lambda dA, Z: dA)  # pretends relu' == 1
    assert gradient_check(params, X, Y, "relu", "sigmoid") > 1e-3


def test_gradient_check_on_every_backend(xp):
    params, X, Y = random_problem("softmax", seed=3)
    error = gradient_check(
        {k: on(xp, v) for k, v in params.items()}, on(xp, X), on(xp, Y), "tanh", "softmax", l2=0.3, epsilon=1e-5
    )
    assert error < 1e-7
