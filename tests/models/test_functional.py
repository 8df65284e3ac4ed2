"""The textbook functions against values worked out independently, on every backend."""

import math

import numpy as np
import pytest

from dnnq.models import (
    ACTIVATIONS,
    DERIVATIVES,
    compute_cost,
    initialize_parameters_deep,
    linear_activation_backward,
    linear_activation_forward,
    linear_backward,
    linear_forward,
    model_backward,
    model_forward,
    update_parameters,
)

from .conftest import host, on


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


# --- initialisation -------------------------------------------------------------------------
def test_initialize_small_matches_course_values(xp):
    params = initialize_parameters_deep([5, 4, 3], seed=3, init="small", xp=xp)
    rs = np.random.RandomState(3)  # one stream, W1 drawn first, then W2
    W1, W2 = rs.randn(4, 5) * 0.01, rs.randn(3, 4) * 0.01
    assert sorted(params) == ["W1", "W2", "b1", "b2"]
    assert host(params["W1"])[0, 0] == pytest.approx(0.01788628473430319, abs=1e-15)  # the course's W1[0,0]
    np.testing.assert_array_equal(host(params["W1"]), W1)
    np.testing.assert_array_equal(host(params["W2"]), W2)
    np.testing.assert_array_equal(host(params["b1"]), np.zeros((4, 1)))
    assert tuple(params["b2"].shape) == (3, 1)


@pytest.mark.parametrize("init, scale", [("xavier", lambda n: 1 / math.sqrt(n)), ("he", lambda n: math.sqrt(2 / n))])
def test_initialize_scaled(xp, init, scale):
    params = initialize_parameters_deep([6, 3, 2], seed=1, init=init, xp=xp)
    rs = np.random.RandomState(1)
    np.testing.assert_allclose(host(params["W1"]), rs.randn(3, 6) * scale(6), rtol=1e-15)
    np.testing.assert_allclose(host(params["W2"]), rs.randn(2, 3) * scale(3), rtol=1e-15)


def test_initialize_dtype_float32():
    params = initialize_parameters_deep([4, 2], seed=2, dtype="float32")
    assert params["W1"].dtype == np.float32 and params["b1"].dtype == np.float32
    np.testing.assert_array_equal(params["W1"], (np.random.RandomState(2).randn(2, 4) * 0.01).astype(np.float32))


# --- one layer forward ----------------------------------------------------------------------
A_PREV = [[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]]  # (n_prev=3, m=2)
W = [[0.2, -0.4, 0.1], [-0.3, 0.5, 0.7]]  # (n_l=2, 3)
B = [[0.05], [-0.1]]  # (2, 1)


def z_by_hand():
    return [[sum(W[i][k] * A_PREV[k][j] for k in range(3)) + B[i][0] for j in range(2)] for i in range(2)]


def test_linear_forward(xp):
    Z, cache = linear_forward(on(xp, A_PREV), on(xp, W), on(xp, B))
    np.testing.assert_allclose(host(Z), z_by_hand(), rtol=1e-14)
    assert len(cache) == 3 and host(cache[0]).tolist() == A_PREV


@pytest.mark.parametrize(
    "activation, g",
    [
        ("sigmoid", sig),
        ("relu", lambda z: max(z, 0.0)),
        ("leaky_relu", lambda z: z if z > 0 else 0.01 * z),
        ("tanh", math.tanh),
        ("linear", lambda z: z),
    ],
)
def test_linear_activation_forward_two_examples(xp, activation, g):
    A, ((A_prev, W_c, b_c), Z) = linear_activation_forward(on(xp, A_PREV), on(xp, W), on(xp, B), activation)
    Zh = z_by_hand()
    np.testing.assert_allclose(host(Z), Zh, rtol=1e-14)
    np.testing.assert_allclose(host(A), [[g(z) for z in row] for row in Zh], rtol=1e-14)


def test_softmax_over_axis0_is_stable(xp):
    Z = [[1000.0, 1.0], [1001.0, 2.0], [999.0, 0.0]]
    A = host(ACTIVATIONS["softmax"](on(xp, Z)))
    for j in range(2):
        col = [Z[i][j] for i in range(3)]
        denom = sum(math.exp(z - max(col)) for z in col)
        np.testing.assert_allclose(A[:, j], [math.exp(z - max(col)) / denom for z in col], rtol=1e-14)
    assert np.isfinite(A).all()


def test_softmax_backward_is_jacobian_vector_product(xp):
    rng = np.random.default_rng(0)
    Z, dA = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    got = host(DERIVATIVES["softmax"](on(xp, dA), on(xp, Z)))
    for j in range(3):  # explicit Jacobian J_ik = s_i (delta_ik - s_k), dZ = J^T dA
        s = np.exp(Z[:, j]) / np.exp(Z[:, j]).sum()
        J = np.diag(s) - np.outer(s, s)
        np.testing.assert_allclose(got[:, j], J.T @ dA[:, j], rtol=1e-12, atol=1e-15)


# --- one layer backward ---------------------------------------------------------------------
def test_linear_backward_by_hand(xp):
    dZ = [[0.1, -0.2], [0.3, 0.4]]
    dA_prev, dW, db = linear_backward(on(xp, dZ), (on(xp, A_PREV), on(xp, W), on(xp, B)))
    m = 2
    dW_hand = [[sum(dZ[i][j] * A_PREV[k][j] for j in range(m)) / m for k in range(3)] for i in range(2)]
    db_hand = [[sum(dZ[i]) / m] for i in range(2)]
    dA_hand = [[sum(W[i][k] * dZ[i][j] for i in range(2)) for j in range(m)] for k in range(3)]
    np.testing.assert_allclose(host(dW), dW_hand, rtol=1e-14)
    np.testing.assert_allclose(host(db), db_hand, rtol=1e-14)
    np.testing.assert_allclose(host(dA_prev), dA_hand, rtol=1e-14)


@pytest.mark.parametrize(
    "activation, gprime",
    [
        ("sigmoid", lambda z: sig(z) * (1 - sig(z))),
        ("relu", lambda z: 1.0 if z > 0 else 0.0),
        ("leaky_relu", lambda z: 1.0 if z > 0 else 0.01),
        ("tanh", lambda z: 1 - math.tanh(z) ** 2),
        ("linear", lambda z: 1.0),
    ],
)
def test_linear_activation_backward_uses_cached_z(xp, activation, gprime):
    Z = [[0.7, -1.2], [0.0, 2.5]]  # includes Z == 0: relu' is 0 there
    dA = [[1.5, -0.5], [2.0, 1.0]]
    A_prev = [[1.0, 2.0], [-1.0, 0.5]]
    W_l = [[0.3, -0.6], [0.9, 0.2]]
    cache = ((on(xp, A_prev), on(xp, W_l), on(xp, [[0.0], [0.0]])), on(xp, Z))
    _, dW, db = linear_activation_backward(on(xp, dA), cache, activation)
    dZ = [[dA[i][j] * gprime(Z[i][j]) for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(host(db), [[sum(r) / 2] for r in dZ], rtol=1e-14)
    np.testing.assert_allclose(
        host(dW), [[sum(dZ[i][j] * A_prev[k][j] for j in range(2)) / 2 for k in range(2)] for i in range(2)], rtol=1e-14
    )


# --- the whole network ----------------------------------------------------------------------
def test_model_forward_cache_format(xp):
    X = on(xp, np.arange(6.0).reshape(3, 2) / 10)
    params = initialize_parameters_deep([3, 4, 2, 1], seed=1, init="he", xp=xp)
    AL, caches = model_forward(X, params, "tanh", "sigmoid")
    assert len(caches) == 3
    (A0, W1, b1), Z1 = caches[0]
    np.testing.assert_array_equal(host(A0), host(X))  # layer 1's linear cache holds A0 = X
    np.testing.assert_allclose(host(caches[1][0][0]), np.tanh(host(Z1)), rtol=1e-14)  # A1 feeds layer 2
    assert tuple(AL.shape) == (1, 2)
    np.testing.assert_allclose(host(AL), 1 / (1 + np.exp(-host(caches[2][1]))), rtol=1e-14)


def test_model_backward_hand_built_caches_does_not_assume_al_is_sigmoid(xp):
    """A 1-hidden-layer net whose caches are built by hand and whose AL is NOT sigmoid(Z2)."""
    A0 = [[1.0, -1.0], [2.0, 0.5]]  # the input X, (2, m=2)
    W1, b1, Z1 = [[0.5, -0.25]], [[0.1]], [[0.3, -0.4]]  # layer 1 (relu): A1 = relu(Z1)
    A1 = [[0.3, 0.0]]
    W2, b2, Z2 = [[1.5]], [[-0.2]], [[0.25, -0.2]]  # layer 2 (sigmoid)
    AL = [[0.6, 0.3]]  # deliberately not sigmoid(Z2)
    Y = [[1.0, 0.0]]
    caches = [((on(xp, A0), on(xp, W1), on(xp, b1)), on(xp, Z1)), ((on(xp, A1), on(xp, W2), on(xp, b2)), on(xp, Z2))]
    grads = model_backward(on(xp, AL), on(xp, Y), caches, "relu", "sigmoid")
    m = 2
    dAL = [-(Y[0][j] / AL[0][j] - (1 - Y[0][j]) / (1 - AL[0][j])) for j in range(m)]
    dZ2 = [dAL[j] * sig(Z2[0][j]) * (1 - sig(Z2[0][j])) for j in range(m)]
    dW2 = sum(dZ2[j] * A1[0][j] for j in range(m)) / m
    dA1 = [W2[0][0] * dZ2[j] for j in range(m)]
    dZ1 = [dA1[j] * (1.0 if Z1[0][j] > 0 else 0.0) for j in range(m)]
    dW1 = [sum(dZ1[j] * A0[k][j] for j in range(m)) / m for k in range(2)]
    dA0 = [[W1[0][k] * dZ1[j] for j in range(m)] for k in range(2)]
    assert sorted(grads) == ["dA0", "dA1", "dW1", "dW2", "db1", "db2"]
    np.testing.assert_allclose(host(grads["dW2"]), [[dW2]], rtol=1e-14)
    np.testing.assert_allclose(host(grads["db2"]), [[sum(dZ2) / m]], rtol=1e-14)
    np.testing.assert_allclose(host(grads["dA1"]), [dA1], rtol=1e-14)
    np.testing.assert_allclose(host(grads["dW1"]), [dW1], rtol=1e-14)
    np.testing.assert_allclose(host(grads["db1"]), [[sum(dZ1) / m]], rtol=1e-14)
    np.testing.assert_allclose(host(grads["dA0"]), dA0, rtol=1e-14)


def test_model_backward_softmax_starts_from_cce_derivative(xp):
    """Single softmax layer, hand-built cache with AL != softmax(Z): the chain uses -Y/AL."""
    A0, W1, b1 = [[1.0, 2.0]], [[0.5], [-0.5]], [[0.0], [0.0]]
    Z1 = [[0.2, -0.1], [0.4, 0.3]]
    AL = [[0.7, 0.2], [0.3, 0.8]]
    Y = [[1.0, 0.0], [0.0, 1.0]]
    caches = [((on(xp, A0), on(xp, W1), on(xp, b1)), on(xp, Z1))]
    grads = model_backward(on(xp, AL), on(xp, Y), caches, "relu", "softmax")
    dZ = np.zeros((2, 2))
    for j in range(2):
        s = [math.exp(Z1[i][j]) / sum(math.exp(Z1[k][j]) for k in range(2)) for i in range(2)]
        dA = [-Y[i][j] / AL[i][j] for i in range(2)]
        inner = sum(dA[k] * s[k] for k in range(2))
        for i in range(2):
            dZ[i, j] = s[i] * (dA[i] - inner)
    np.testing.assert_allclose(
        host(grads["dW1"]), [[(dZ[i, 0] * 1.0 + dZ[i, 1] * 2.0) / 2] for i in range(2)], rtol=1e-13
    )


def test_compute_cost_formulas(xp):
    AL, Y = [[0.8, 0.1, 0.6]], [[1.0, 0.0, 0.0]]
    bce = -sum(y * math.log(a) + (1 - y) * math.log(1 - a) for a, y in zip(AL[0], Y[0], strict=True)) / 3
    got = compute_cost(on(xp, AL), on(xp, Y))
    assert isinstance(got, float) and got == pytest.approx(bce, rel=1e-14)
    P, T = [[0.7, 0.2], [0.3, 0.8]], [[1.0, 0.0], [0.0, 1.0]]
    assert compute_cost(on(xp, P), on(xp, T), "categorical_crossentropy") == pytest.approx(
        -(math.log(0.7) + math.log(0.8)) / 2, rel=1e-14
    )
    assert compute_cost(on(xp, [[1.0, 3.0]]), on(xp, [[0.5, 1.0]]), "mse") == pytest.approx(
        (0.25 + 4.0) / (2 * 2), rel=1e-14
    )


def test_compute_cost_l2_term(xp):
    params = {"W1": on(xp, [[1.0, 2.0]]), "b1": on(xp, [[5.0]]), "W2": on(xp, [[3.0]]), "b2": on(xp, [[0.0]])}
    AL, Y = on(xp, [[0.5, 0.5]]), on(xp, [[1.0, 0.0]])
    got = compute_cost(AL, Y, parameters=params, l2=0.4)
    assert got == pytest.approx(math.log(2) + 0.4 / (2 * 2) * (1 + 4 + 9), rel=1e-14)


def test_update_parameters_by_hand(xp):
    params = {"W1": on(xp, [[1.0, -1.0]]), "b1": on(xp, [[0.5]])}
    grads = {"dW1": on(xp, [[0.2, 0.4]]), "db1": on(xp, [[-1.0]]), "dA0": on(xp, [[9.0], [9.0]])}
    new = update_parameters(params, grads, 0.5)
    np.testing.assert_allclose(host(new["W1"]), [[0.9, -1.2]], rtol=1e-15)
    np.testing.assert_allclose(host(new["b1"]), [[1.0]], rtol=1e-15)


def test_predict_labels_and_proba_on_every_backend(xp):
    from dnnq.models import predict

    params = {"W1": np.array([[1.0, -1.0]]), "b1": np.array([[0.0]])}  # one sigmoid unit: Z = x0 - x1
    X = on(xp, [[2.0, 0.0, 5.0], [1.0, 3.0, 5.5]])  # Z = 1, -3, -0.5
    np.testing.assert_array_equal(predict(params, X, output="sigmoid"), [1, 0, 0])
    np.testing.assert_allclose(
        predict(params, X, output="sigmoid", proba=True), [[sig(1), sig(-3), sig(-0.5)]], rtol=1e-14
    )
    np.testing.assert_allclose(predict(params, X, output="linear"), [1.0, -3.0, -0.5], rtol=1e-14)
    two = {"W1": np.array([[1.0, 0.0], [0.0, 1.0]]), "b1": np.array([[0.0], [0.0]])}  # softmax picks the larger x
    np.testing.assert_array_equal(predict(two, X, output="softmax"), [0, 1, 1])


@pytest.mark.parametrize("output, n_y", [("sigmoid", 1), ("softmax", 3), ("linear", 2)])
def test_labels_from_output_is_what_predict_returns(output, n_y):
    from dnnq.models import labels_from_output, predict

    rng = np.random.default_rng(4)
    params = {
        "W1": rng.normal(size=(5, 3)),
        "b1": rng.normal(size=(5, 1)),
        "W2": rng.normal(size=(n_y, 5)),
        "b2": rng.normal(size=(n_y, 1)),
    }
    X = rng.normal(size=(3, 30))
    AL = predict(params, X, output=output, proba=True)
    np.testing.assert_array_equal(labels_from_output(AL, output), predict(params, X, output=output))
