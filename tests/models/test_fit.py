"""fit(): parity with the textbook loop, exact resume, learning, errors."""

import io
import subprocess
import sys

import numpy as np
import pytest

from dnnq.models import (
    Checkpoint,
    DeviceUnavailable,
    TrainConfig,
    TrainingDiverged,
    compute_cost,
    fit,
    initialize_parameters_deep,
    linear_activation_backward,
    linear_activation_forward,
    model_backward,
    model_forward,
    predict,
    update_parameters,
)
from dnnq.models.backend import gpu_available

LOSS = {"sigmoid": "binary_crossentropy", "softmax": "categorical_crossentropy", "linear": "mse"}


def toy(output, m=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((4, m))
    if output == "sigmoid":
        Y = (X[0:1] - 0.5 * X[1:2] > 0).astype(float)
    elif output == "softmax":
        Y = np.eye(3)[:, (X[0] > 0).astype(int) + (X[1] > 0)]
    else:
        Y = np.vstack([X[0] * X[1], X[2] - X[3]])
    return X, Y


def textbook_loop(X, Y, dims, hidden, output, lr, epochs, l2, seed, init):
    params = initialize_parameters_deep(dims, seed=seed, init=init)
    costs = []
    for _ in range(epochs):
        AL, caches = model_forward(X, params, hidden, output)
        costs.append(compute_cost(AL, Y, LOSS[output], parameters=params, l2=l2))
        grads = model_backward(AL, Y, caches, hidden, output, l2=l2)
        params = update_parameters(params, grads, lr)
    return costs, params


@pytest.mark.parametrize("l2", [0.0, 0.5])
@pytest.mark.parametrize(
    "hidden, output", [("relu", "sigmoid"), ("tanh", "softmax"), ("leaky_relu", "linear"), ("sigmoid", "sigmoid")]
)
def test_full_batch_gd_equals_textbook_loop(hidden, output, l2):
    X, Y = toy(output)
    dims = [4, 6, 5, Y.shape[0]]
    cfg = TrainConfig(
        layer_dims=dims,
        hidden_activation=hidden,
        output=output,
        init="he",
        seed=2,
        optimizer="gd",
        learning_rate=0.05,
        epochs=60,
        l2=l2,
        dtype="float64",
        device="cpu",
    )
    result = fit(X, Y, cfg)
    costs, params = textbook_loop(X, Y, dims, hidden, output, 0.05, 60, l2, 2, "he")
    assert [r.epoch for r in result.history] == list(range(1, 61))
    np.testing.assert_allclose([r.loss for r in result.history], costs, rtol=0, atol=1e-10)
    assert costs[-1] < costs[0]  # it trained
    for key, value in params.items():
        np.testing.assert_allclose(result.parameters[key], value, rtol=0, atol=1e-10)
    assert result.device == "cpu" and result.epochs_completed == 60 and not result.stopped


def test_minibatch_loss_is_example_weighted_mean_of_batch_costs():
    X, Y = toy("sigmoid", m=50)
    dims = [4, 3, 1]
    cfg = TrainConfig(
        layer_dims=dims,
        init="xavier",
        seed=4,
        learning_rate=0.1,
        epochs=3,
        batch_size=16,
        shuffle=False,
        l2=0.2,
        dtype="float64",
        device="cpu",
    )
    result = fit(X, Y, cfg)
    params = initialize_parameters_deep(dims, seed=4, init="xavier")
    for epoch in range(3):
        weighted = 0.0
        for s in range(0, 50, 16):  # batches of 16, 16, 16, 2
            xb, yb = X[:, s : s + 16], Y[:, s : s + 16]
            AL, caches = model_forward(xb, params)
            weighted += xb.shape[1] * compute_cost(AL, yb, parameters=params, l2=0.2)
            params = update_parameters(params, model_backward(AL, yb, caches, l2=0.2), 0.1)
        assert result.history[epoch].loss == pytest.approx(weighted / 50, abs=1e-12)
    np.testing.assert_allclose(result.parameters["W1"], params["W1"], atol=1e-12)


def test_dropout_is_textbook_inverted_dropout_on_hidden_layers():
    """Full batch, tanh: masks drawn from the documented epoch generator default_rng([seed, epoch]),
    layer 1 first, examples-first shape (m, n_l); the textbook loop applies them by hand."""
    X, Y = toy("sigmoid", m=40)
    dims, keep, seed, lr = [4, 6, 5, 1], 0.7, 3, 0.1
    cfg = TrainConfig(
        layer_dims=dims,
        hidden_activation="tanh",
        init="xavier",
        seed=seed,
        learning_rate=lr,
        epochs=3,
        dropout_keep_prob=keep,
        dtype="float64",
        device="cpu",
    )
    result = fit(X, Y, cfg)
    params = initialize_parameters_deep(dims, seed=seed, init="xavier")
    for epoch in range(3):
        rng = np.random.default_rng([seed, epoch])
        scale = {l: (rng.random((40, dims[l])) < keep).T / keep for l in (1, 2)}  # D_l / keep, (n_l, m)
        A, caches = X, []
        for l in (1, 2):
            A, cache = linear_activation_forward(A, params[f"W{l}"], params[f"b{l}"], "tanh")
            A = A * scale[l]
            caches.append(cache)
        AL, cache = linear_activation_forward(A, params["W3"], params["b3"], "sigmoid")
        caches.append(cache)
        assert result.history[epoch].loss == pytest.approx(compute_cost(AL, Y), abs=1e-12)
        grads, dA = {}, -(Y / AL - (1 - Y) / (1 - AL))
        for l in (3, 2, 1):
            dA_prev, grads[f"dW{l}"], grads[f"db{l}"] = linear_activation_backward(
                dA, caches[l - 1], "sigmoid" if l == 3 else "tanh"
            )
            if l > 1:
                dA = dA_prev * scale[l - 1]
        params = update_parameters(params, grads, lr)
    for key, value in params.items():
        np.testing.assert_allclose(result.parameters[key], value, rtol=0, atol=1e-12)


def test_resume_from_saved_checkpoint_is_exact():
    X, Y = toy("softmax", m=300)
    labels = np.argmax(Y, axis=0)  # integer labels (m,)
    cfg = TrainConfig(
        layer_dims=[4, 16, 8, 3],
        output="softmax",
        optimizer="adam",
        learning_rate=0.01,
        epochs=10,
        batch_size=32,
        shuffle=True,
        dropout_keep_prob=0.8,
        l2=0.01,
        lr_decay="inverse_time",
        decay_rate=0.5,
        seed=7,
        dtype="float32",
        device="cpu",
    )
    uninterrupted = fit(X, labels, cfg)

    saved = {}

    def on_epoch(state):
        if state.epoch == 4:
            saved["arrays"] = state.checkpoint().to_arrays()

    first = fit(X, labels, cfg, on_epoch=on_epoch, should_stop=lambda: "arrays" in saved)
    assert first.stopped and first.epochs_completed == 4
    buffer = io.BytesIO()
    np.savez(buffer, **saved["arrays"])
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        ckpt = Checkpoint.from_arrays(dict(npz))
    assert ckpt.epoch == 4 and int(ckpt.optimizer_state["t"]) == 4 * 10  # Adam's t: 10 batches per epoch
    resumed = fit(X, labels, cfg, checkpoint=ckpt)
    assert resumed.epochs_completed == 10 and not resumed.stopped
    assert [r.to_dict() for r in resumed.history] == [r.to_dict() for r in uninterrupted.history]
    for key, value in uninterrupted.parameters.items():
        np.testing.assert_array_equal(resumed.parameters[key], value)


def test_checkpoint_that_does_not_fit_the_config_is_refused():
    X, Y = toy("sigmoid")
    cfg = TrainConfig(layer_dims=[4, 3, 1], epochs=2, device="cpu")
    got = {}
    fit(X, Y, cfg, on_epoch=lambda s: got.setdefault("c", s.checkpoint()))
    with pytest.raises(ValueError, match="W1"):
        fit(X, Y, TrainConfig(layer_dims=[4, 5, 1], epochs=2, device="cpu"), checkpoint=got["c"])


def test_minibatch_training_learns_a_separable_set():
    rng = np.random.default_rng(1)
    m = 800
    labels = rng.integers(0, 2, m)
    X = rng.standard_normal((2, m)) + np.where(labels == 1, 2.5, -2.5)  # two well separated blobs
    cfg = TrainConfig(
        layer_dims=[2, 8, 1],
        optimizer="momentum",
        learning_rate=0.1,
        epochs=15,
        batch_size=32,
        dropout_keep_prob=0.9,
        device="cpu",
    )
    result = fit(X, labels[None, :], cfg, X_val=X[:, :200], Y_val=labels[None, :200])
    assert result.history[-1].accuracy >= 0.95
    assert result.history[-1].val_accuracy >= 0.95
    assert (predict(result.parameters, X, "relu", "sigmoid") == labels).mean() >= 0.95
    assert result.parameters["W1"].dtype == np.float32


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "rmsprop", "adam"])
def test_every_optimizer_reduces_the_loss(optimizer):
    X, Y = toy("linear")
    cfg = TrainConfig(
        layer_dims=[4, 10, 2],
        output="linear",
        hidden_activation="tanh",
        optimizer=optimizer,
        learning_rate=0.01,
        epochs=20,
        batch_size=20,
        device="cpu",
    )
    history = fit(X, Y, cfg).history
    assert history[-1].loss < 0.8 * history[0].loss
    assert history[-1].accuracy is None


def test_validation_metrics_are_those_of_the_returned_parameters():
    X, Y = toy("sigmoid", m=200)
    cfg = TrainConfig(layer_dims=[4, 5, 1], epochs=5, learning_rate=0.1, l2=0.1, dtype="float64", device="cpu")
    result = fit(X[:, :150], Y[:, :150], cfg, X_val=X[:, 150:], Y_val=Y[:, 150:])
    AL, _ = model_forward(X[:, 150:], result.parameters)
    expected = compute_cost(AL, Y[:, 150:], parameters=result.parameters, l2=0.1)
    assert result.history[-1].val_loss == pytest.approx(expected, abs=1e-12)
    assert result.history[-1].val_accuracy == pytest.approx(((AL > 0.5) == Y[:, 150:]).mean())


def test_callbacks_once_per_epoch_and_should_stop():
    X, Y = toy("sigmoid")
    cfg = TrainConfig(layer_dims=[4, 3, 1], epochs=8, device="cpu")
    seen, polls = [], []
    result = fit(
        X,
        Y,
        cfg,
        on_epoch=lambda s: seen.append((s.epoch, s.epochs, s.record.epoch)),
        should_stop=lambda: polls.append(1) or len(polls) >= 3,
    )
    assert seen == [(1, 8, 1), (2, 8, 2), (3, 8, 3)]
    assert result.stopped and result.epochs_completed == 3 and len(result.history) == 3
    assert set(result.timings) >= {"setup_s", "train_s", "total_s", "epoch_mean_s"}


def test_divergence_names_the_epoch_and_what_to_try():
    X, Y = toy("linear")
    cfg = TrainConfig(
        layer_dims=[4, 8, 2], output="linear", learning_rate=5.0, epochs=50, dtype="float64", device="cpu"
    )
    with pytest.raises(TrainingDiverged) as info:
        fit(X * 10, Y, cfg)
    message = str(info.value)
    assert 1 <= info.value.epoch < 50
    assert f"Training diverged at epoch {info.value.epoch}" in message
    assert "lower learning_rate" in message and "scale the inputs" in message


@pytest.mark.skipif(gpu_available(), reason="a GPU is available here, so device='gpu' works")
def test_gpu_without_gpu_raises_device_unavailable():
    X, Y = toy("sigmoid")
    with pytest.raises(DeviceUnavailable, match="device='cpu'"):
        fit(X, Y, TrainConfig(layer_dims=[4, 3, 1], epochs=1, device="gpu"))
    assert fit(X, Y, TrainConfig(layer_dims=[4, 3, 1], epochs=1, device="auto")).device == "cpu"


@pytest.mark.parametrize(
    "X_shape, Y, match",
    [
        ((5, 30), np.zeros((1, 30)), r"shape \(n_x=4, m\)"),
        ((4, 30), np.zeros((1, 29)), r"shape \(n_y=1, m=30\)"),
        ((4, 30), np.full((1, 30), 2.0), r"in \[0, 1\]"),
    ],
)
def test_bad_data_is_explained(X_shape, Y, match):
    with pytest.raises(ValueError, match=match):
        fit(np.zeros(X_shape), Y, TrainConfig(layer_dims=[4, 3, 1], epochs=1, device="cpu"))


def test_data_past_float32s_range_is_told_apart_from_nan():
    cfg = TrainConfig(layer_dims=[2, 3, 1], epochs=1, device="cpu", dtype="float32")
    X, Y = np.array([[1.0, 1e300], [0.5, 2.0]]), np.array([[0.0, 1.0]])
    with pytest.raises(ValueError, match="training X has values past float32's largest"):
        fit(X, Y, cfg)
    with pytest.raises(ValueError, match="training X contains NaN"):
        fit(np.array([[1.0, np.nan], [0.5, 2.0]]), Y, cfg)
    linear = TrainConfig(layer_dims=[2, 3, 1], epochs=1, device="cpu", dtype="float32", output="linear")
    with pytest.raises(ValueError, match="training Y has values past float32's largest"):
        fit(np.ones((2, 2)), np.array([[1e300, 0.0]]), linear)
    assert fit(X, Y, TrainConfig(layer_dims=[2, 3, 1], epochs=1, device="cpu", dtype="float64")).epochs_completed == 1


def test_softmax_labels_out_of_range():
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 3\)"):
        fit(np.zeros((4, 5)), np.array([0, 1, 2, 3, 1]), TrainConfig(layer_dims=[4, 3], output="softmax", device="cpu"))


def test_predict_shapes_and_proba():
    X, Y = toy("softmax")
    result = fit(X, np.argmax(Y, axis=0), TrainConfig(layer_dims=[4, 6, 3], output="softmax", epochs=3, device="cpu"))
    labels = predict(result.parameters, X, "relu", "softmax")
    proba = predict(result.parameters, X, "relu", "softmax", proba=True)
    assert labels.shape == (120,) and proba.shape == (3, 120)
    np.testing.assert_allclose(proba.sum(axis=0), 1, rtol=1e-5)
    np.testing.assert_array_equal(labels, np.argmax(proba, axis=0))
    with pytest.raises(ValueError, match="pass X.T"):
        predict(result.parameters, X.T, "relu", "softmax")


def test_importing_models_does_not_import_cupy():
    code = "import sys, dnnq.models; assert 'cupy' not in sys.modules, 'cupy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
