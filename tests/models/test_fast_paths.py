"""fit's fast paths against the textbook: shuffled softmax mini-batches with labels gathered per
step, and plain gd taking lr-scaled gradients (GD.update_prescaled_flat)."""

import numpy as np
import pytest

from dnnq.models import GD, TrainConfig, fit
from dnnq.models.flat import flat_views, flatten_params
from dnnq.models.network import (
    compute_cost,
    initialize_parameters_deep,
    model_backward,
    model_forward,
    update_parameters,
)


def test_gd_prescaled_update_is_the_plain_update():
    rng = np.random.default_rng(0)
    p = {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal((3, 1))}
    g = {"dW1": rng.standard_normal((3, 4)), "db1": rng.standard_normal((3, 1))}
    plain = {k: v.copy() for k, v in p.items()}
    flat, layout = flatten_params(np, {k: v.copy() for k, v in p.items()})
    flat_grads, _ = flatten_params(np, {"W1": 0.3 * g["dW1"], "b1": 0.3 * g["db1"]})
    opt_plain, opt_fast = GD(0.3), GD(0.3)
    assert opt_fast.prescale() == 0.3
    opt_plain.update(plain, g)
    opt_fast.update_prescaled_flat(flat, flat_grads)
    fast = flat_views(flat, layout)
    for key in p:
        np.testing.assert_allclose(fast[key], plain[key], rtol=1e-15)
        assert not np.array_equal(fast[key], p[key])  # it stepped
    assert opt_fast.t == opt_plain.t == 1


def test_shuffled_softmax_minibatch_gd_is_the_textbook_loop():
    """Loss, accuracy (argmax of Z against the label) and parameters of a shuffled mini-batch run,
    with l2, against model_forward/model_backward/update_parameters on the same permutations."""
    rng = np.random.default_rng(1)
    m, dims, lr, l2, seed, batch = 45, [5, 6, 3], 0.2, 0.1, 7, 16
    X = rng.standard_normal((5, m))
    labels = rng.integers(0, 3, m)
    cfg = TrainConfig(
        layer_dims=dims,
        output="softmax",
        init="xavier",
        seed=seed,
        optimizer="gd",
        learning_rate=lr,
        epochs=3,
        batch_size=batch,
        shuffle=True,
        l2=l2,
        dtype="float64",
        device="cpu",
    )
    result = fit(X, labels, cfg)
    Y = np.eye(3)[labels].T  # (3, m) one-hot
    params = initialize_parameters_deep(dims, seed=seed, init="xavier", dtype="float64")
    for epoch in range(3):
        perm = np.random.default_rng([seed, epoch]).permutation(m)
        weighted, correct = 0.0, 0
        for s in range(0, m, batch):
            idx = perm[s : s + batch]
            xb, yb = X[:, idx], Y[:, idx]
            AL, caches = model_forward(xb, params, "relu", "softmax")
            weighted += xb.shape[1] * compute_cost(AL, yb, "categorical_crossentropy", parameters=params, l2=l2)
            correct += int(np.sum(np.argmax(AL, axis=0) == labels[idx]))
            params = update_parameters(params, model_backward(AL, yb, caches, "relu", "softmax", l2=l2), lr)
        assert result.history[epoch].loss == pytest.approx(weighted / m, abs=1e-12)
        assert result.history[epoch].accuracy == correct / m
    for key, value in params.items():
        np.testing.assert_allclose(result.parameters[key], value, rtol=0, atol=1e-12)
